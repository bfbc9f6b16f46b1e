from hypothesis import settings

# Property tests check logic, not speed: a loaded CI machine must not turn them flaky.
settings.register_profile("exo", deadline=None, print_blob=True)
settings.load_profile("exo")
