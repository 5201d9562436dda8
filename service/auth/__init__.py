"""Bearer tokens: creation, hashing, verification."""
