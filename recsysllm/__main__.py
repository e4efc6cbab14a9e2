import sys

from recsysllm.cli import main

sys.exit(main())
