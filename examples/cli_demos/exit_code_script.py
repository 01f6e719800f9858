"""A tool whose documented "nothing to do" exit code is 3: allowed, so the item passes."""

# pytest.mark.exec(allowed_exit_codes=[0, 3])

import sys

print("nothing to do")
sys.exit(3)
