"""Type stub of service._jpeg (service/csrc/jpeg_region.cpp), built where libjpeg-turbo's headers are found."""

import numpy as np
from numpy.typing import NDArray

def decode_region(data: bytes, denom: int, x0: int, y0: int, x1: int, y1: int) -> NDArray[np.uint8]: ...
