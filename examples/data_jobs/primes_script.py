"""A CPU-bound job: a sieve, checked against a known count."""

# pytest.mark.exec(priority=-5)

LIMIT = 200_000
sieve = bytearray([1]) * (LIMIT + 1)
sieve[0:2] = b"\x00\x00"
for n in range(2, int(LIMIT**0.5) + 1):
    if sieve[n]:
        sieve[n * n :: n] = bytearray(len(sieve[n * n :: n]))
count = sum(sieve)
print(f"{count} primes below {LIMIT}")
assert count == 17984
