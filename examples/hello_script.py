"""The smallest example: a script that prints and exits 0 passes."""

print("hello from a script run by pytest --exec-parallel")
