// Python bindings of the packed-binary engine. Arrays cross as numpy arrays (C-contiguous); no torch here.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <cstdint>
#include <stdexcept>

#include "bitpack.h"

namespace nb = nanobind;

namespace {

using FloatMatrix = nb::ndarray<const float, nb::ndim<2>, nb::c_contig, nb::device::cpu>;
using WordMatrix = nb::ndarray<const std::uint64_t, nb::ndim<2>, nb::c_contig, nb::device::cpu>;

nb::ndarray<nb::numpy, std::uint64_t, nb::ndim<2>> py_pack_signs(FloatMatrix x) {
  const std::size_t rows = x.shape(0), n = x.shape(1);
  const std::size_t words = binpose::words_for_bits(n);
  auto* out = new std::uint64_t[rows * words];
  nb::capsule owner(out, [](void* p) noexcept { delete[] static_cast<std::uint64_t*>(p); });
  {
    nb::gil_scoped_release release;
    binpose::pack_signs(x.data(), rows, n, out);
  }
  return nb::ndarray<nb::numpy, std::uint64_t, nb::ndim<2>>(out, {rows, words}, owner);
}

nb::ndarray<nb::numpy, float, nb::ndim<2>> py_unpack_signs(WordMatrix bits, std::size_t n) {
  const std::size_t rows = bits.shape(0);
  if (bits.shape(1) != binpose::words_for_bits(n)) {
    throw std::invalid_argument("unpack_signs: expected ceil(n / 64) words per row for n = " + std::to_string(n) +
                                ", got " + std::to_string(bits.shape(1)));
  }
  auto* out = new float[rows * n];
  nb::capsule owner(out, [](void* p) noexcept { delete[] static_cast<float*>(p); });
  {
    nb::gil_scoped_release release;
    binpose::unpack_signs(bits.data(), rows, n, out);
  }
  return nb::ndarray<nb::numpy, float, nb::ndim<2>>(out, {rows, n}, owner);
}

}  // namespace

NB_MODULE(_native, m) {
  m.doc() = "binpose packed-binary engine (C++ core)";
  m.def("pack_signs", &py_pack_signs, nb::arg("x"),
        "Pack each row of a float32 matrix into sign bits (bit 1 = negative), 64 per uint64 word.");
  m.def("unpack_signs", &py_unpack_signs, nb::arg("bits"), nb::arg("n"),
        "Inverse of pack_signs: uint64 words -> float32 +1/-1 matrix with n columns.");
}
