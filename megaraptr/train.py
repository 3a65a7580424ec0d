"""``python -m megaraptr.train``: the training command (:mod:`megaraptr.tools.train`)."""
import sys

from megaraptr.tools.train import main

if __name__ == "__main__":
    sys.exit(main())
