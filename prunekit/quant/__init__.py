"""Weight quantization: per-channel symmetric uniform integers, BatchNorm folding, and a real low-bit artifact."""
from .artifact import load_quantized, save_quantized  # noqa: F401
from .fold import fold_batchnorm, folded_weight_bias  # noqa: F401
from .uniform import dequantize, quantize_per_channel, quantize_tensor_  # noqa: F401
