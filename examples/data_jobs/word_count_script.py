"""A small data job: count words in an inline corpus and check the result."""

# pytest.mark.exec(priority=-10, timeout=30)
# Lower priority numbers start first: long data jobs go ahead of quick demos.

from collections import Counter

CORPUS = """
the quick brown fox jumps over the lazy dog
the dog barks and the fox runs
"""

counts = Counter(CORPUS.split())
top = counts.most_common(3)
print("top words:", top)
assert top[0] == ("the", 4), top
