"""Print the resource table of every Triton kernel compiled ahead of time for sm_80 and
sm_90 (registers, shared memory, spills, MMA kind); no GPU needed. Runs tools/aot.py.

    python benchmarks/kernel_resources.py [--json out.json] [--only "90 bf16 _attn"]

Runs the compiler in this process, so TRITON_INTERPRET must not be set to 1.
"""

import os
import sys
from pathlib import Path

if __name__ == "__main__":
    from common import interpreter_refusal

    refusal = interpreter_refusal("kernel_resources.py", "compiles for real GPUs")
    if refusal:
        sys.exit(refusal)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
    from aot import main

    sys.exit(main())
