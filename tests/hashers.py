"""The test session's password hasher: Django's PBKDF2 with 1,000 iterations instead of 1,000,000 (0.2 s of CPU per
user made or logged in on a dev machine, and the suite makes thousands). Its hashes are ordinary pbkdf2_sha256
ones, the count written in each, so the servers the tests start, on the production hashers, check them as they
are and upgrade each on its first login, as Django does when the iteration count rises."""
from django.contrib.auth.hashers import PBKDF2PasswordHasher


class FewIterationsPBKDF2PasswordHasher(PBKDF2PasswordHasher):
    iterations = 1000
