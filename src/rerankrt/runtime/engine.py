"""The old name of `rerankrt.runtime.reranker`, kept so that imports of it keep working ("engine" now means a
TensorRT engine only): importing this module gives that one."""

import sys

from rerankrt.runtime import reranker

sys.modules[__name__] = reranker
