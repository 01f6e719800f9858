"""A CLI demo run with arguments from its exec mark, as a user would type them."""

# pytest.mark.exec(args=["--name", "pytest", "--repeat", "2"], env={"GREETING": "Hi"})

import argparse
import os

parser = argparse.ArgumentParser()
parser.add_argument("--name", required=True)
parser.add_argument("--repeat", type=int, default=1)
options = parser.parse_args()
for _ in range(options.repeat):
    print(f"{os.environ['GREETING']}, {options.name}!")
