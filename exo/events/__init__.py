"""The vocabulary and the pure core: ids, facts, events, commands, codec, state, log."""
