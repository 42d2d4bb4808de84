"""Entry points of the model side. Stage 1/2 training and inference are not built yet."""
import sys


def train_main(argv=None) -> int:
    print("ifmdm-train: not built yet (stage 1 and stage 2 training are open issues)", file=sys.stderr)
    return 2


def infer_main(argv=None) -> int:
    print("ifmdm-infer: not built yet (inference is an open issue)", file=sys.stderr)
    return 2
