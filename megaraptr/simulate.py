"""``python -m megaraptr.simulate``: the pipeline simulator's command (:mod:`megaraptr.tools.simulate`)."""
import sys

from megaraptr.tools.simulate import main

if __name__ == "__main__":
    sys.exit(main())
