// service._jpeg: decode one rectangle of a JPEG, optionally at 1/2, 1/4 or 1/8 scale, with libjpeg-turbo.
//
// A pose request with known person boxes needs only the pixels under the boxes. libjpeg-turbo can skip the
// rest: rows above the rectangle are entropy-decoded only (jpeg_skip_scanlines: no inverse DCT, upsampling or
// colour conversion), columns beside it are not reconstructed (jpeg_crop_scanline, to the enclosing iMCU
// columns), and decoding stops after its last row. The pixels are those of a full decode with the same settings
// (libjpeg's defaults: islow DCT, fancy upsampling, as Pillow and simplejpeg use), cut to the rectangle.
//
// Strict: a warning (corrupt data, a truncated file) is an error, as simplejpeg's strict mode, and a file cut short
// is refused even where the window lies before the cut. (Corrupt entropy data below the window is not seen: nothing
// there is decoded.) No Python object is touched while decoding, so the GIL is released for it.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <csetjmp>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

extern "C" {
#include <jpeglib.h>
}

namespace nb = nanobind;

namespace {

struct ErrorManager {
  jpeg_error_mgr pub;
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

void on_error(j_common_ptr cinfo) {
  auto* err = reinterpret_cast<ErrorManager*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, err->message);
  std::longjmp(err->jump, 1);
}

void on_message(j_common_ptr cinfo, int level) {
  if (level < 0) on_error(cinfo);  // a warning: corrupt or truncated data
}

struct Region {
  int denom, x0, y0, x1, y1;  // the rectangle [x0, x1) x [y0, y1) in pixels of the 1/denom-scale image
};

// Whether the file holds an EOI marker after its last SOS (start of scan): a file cut short does not. Decoding stops
// after the window's last row, so libjpeg never reaches the end to see it; in entropy-coded data 0xFF is followed by
// 0x00 or a restart marker, so an 0xFF 0xD9 after the last SOS is the real end (an EXIF thumbnail's lies before).
bool ends_after_last_scan(const unsigned char* data, std::size_t size) {
  std::size_t eoi = 0, sos = 0;
  for (std::size_t i = size; i-- > 1;) {
    if (data[i - 1] != 0xFF) continue;
    if (data[i] == 0xD9 && eoi == 0) eoi = i;
    if (data[i] == 0xDA) {
      sos = i;
      break;
    }
  }
  return sos > 0 && eoi > sos;
}

// Plain C control flow between setjmp and longjmp: no object with a destructor lives in this function; the row
// buffer is malloc'd and freed on both paths. Returns an empty string on success, else libjpeg's message.
std::string decode_region(const unsigned char* data, std::size_t size, Region r, unsigned char* out) {
  jpeg_decompress_struct cinfo;
  ErrorManager err;
  unsigned char* volatile row = nullptr;
  cinfo.err = jpeg_std_error(&err.pub);
  err.pub.error_exit = on_error;
  err.pub.emit_message = on_message;
  err.message[0] = '\0';
  if (setjmp(err.jump)) {
    std::free(row);
    jpeg_destroy_decompress(&cinfo);
    return err.message[0] ? err.message : "libjpeg error";
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, data, static_cast<unsigned long>(size));
  jpeg_read_header(&cinfo, TRUE);
  if (cinfo.jpeg_color_space != JCS_YCbCr && cinfo.jpeg_color_space != JCS_RGB &&
      cinfo.jpeg_color_space != JCS_GRAYSCALE) {
    jpeg_destroy_decompress(&cinfo);
    return "only YCbCr, RGB and grayscale JPEGs decode to RGB here";
  }
  cinfo.out_color_space = JCS_RGB;
  cinfo.scale_num = 1;
  cinfo.scale_denom = static_cast<unsigned int>(r.denom);
  jpeg_start_decompress(&cinfo);
  if (r.x1 > static_cast<int>(cinfo.output_width) || r.y1 > static_cast<int>(cinfo.output_height)) {
    jpeg_abort_decompress(&cinfo);
    jpeg_destroy_decompress(&cinfo);
    return "the region lies outside the " + std::to_string(cinfo.output_width) + "x" +
           std::to_string(cinfo.output_height) + " image";
  }
  // The columns decoded: the window plus one iMCU column on each side (libjpeg widens it further, to whole iMCU
  // columns). Fancy upsampling replicates the edge column of a cropped scanline instead of reading its neighbour, so
  // the window's own edge columns came out 1 off in a test when the crop ended there.
  const int margin = cinfo.max_h_samp_factor * cinfo.min_DCT_scaled_size;
  const int cx0 = r.x0 - margin > 0 ? r.x0 - margin : 0;
  const int cx1 = r.x1 + margin < static_cast<int>(cinfo.output_width) ? r.x1 + margin : cinfo.output_width;
  JDIMENSION xoff = static_cast<JDIMENSION>(cx0), width = static_cast<JDIMENSION>(cx1 - cx0);
  if (width < cinfo.output_width) jpeg_crop_scanline(&cinfo, &xoff, &width);
  // Up to 16 rows per call (a whole iMCU row of 4:2:0): one row at a time takes the upsampler's spare-row path.
  constexpr int batch = 16;
  const std::size_t stride = static_cast<std::size_t>(width) * 3;
  row = static_cast<unsigned char*>(std::malloc(stride * static_cast<std::size_t>(batch)));
  if (row == nullptr) {
    jpeg_abort_decompress(&cinfo);
    jpeg_destroy_decompress(&cinfo);
    return "out of memory";
  }
  if (r.y0 > 0) jpeg_skip_scanlines(&cinfo, static_cast<JDIMENSION>(r.y0));
  const std::size_t skip = (static_cast<std::size_t>(r.x0) - xoff) * 3, bytes = static_cast<std::size_t>(r.x1 - r.x0) * 3;
  JSAMPROW rows[batch];
  for (int y = r.y0; y < r.y1;) {
    const int want = r.y1 - y < batch ? r.y1 - y : batch;
    for (int i = 0; i < want; ++i) rows[i] = row + static_cast<std::size_t>(i) * stride;
    const int got = static_cast<int>(jpeg_read_scanlines(&cinfo, rows, static_cast<JDIMENSION>(want)));
    for (int i = 0; i < got; ++i)
      std::memcpy(out + static_cast<std::size_t>(y - r.y0 + i) * bytes, rows[i] + skip, bytes);
    if (got == 0) {  // cannot happen with an in-memory source (a truncated file is a warning, hence an error)
      std::free(row);
      jpeg_abort_decompress(&cinfo);
      jpeg_destroy_decompress(&cinfo);
      return "libjpeg returned no rows";
    }
    y += got;
  }
  std::free(row);
  row = nullptr;
  jpeg_abort_decompress(&cinfo);  // the rows below the region are never decoded
  jpeg_destroy_decompress(&cinfo);
  return {};
}

nb::ndarray<nb::numpy, std::uint8_t, nb::ndim<3>> py_decode_region(nb::bytes data, int denom, int x0, int y0, int x1,
                                                                   int y1) {
  if (denom != 1 && denom != 2 && denom != 4 && denom != 8) throw std::invalid_argument("denom must be 1, 2, 4 or 8");
  if (x0 < 0 || y0 < 0 || x1 <= x0 || y1 <= y0) throw std::invalid_argument("an empty or negative region");
  const std::size_t h = static_cast<std::size_t>(y1 - y0), w = static_cast<std::size_t>(x1 - x0);
  auto* out = new std::uint8_t[h * w * 3];
  nb::capsule owner(out, [](void* p) noexcept { delete[] static_cast<std::uint8_t*>(p); });
  std::string error;
  {
    nb::gil_scoped_release release;
    const auto* bytes = reinterpret_cast<const unsigned char*>(data.c_str());
    if (data.size() >= 2 && bytes[0] == 0xFF && bytes[1] == 0xD8 && !ends_after_last_scan(bytes, data.size()))
      error = "Premature end of JPEG file (no EOI marker after the last scan)";
    else
      error = decode_region(bytes, data.size(), Region{denom, x0, y0, x1, y1}, out);
  }
  if (!error.empty()) throw std::runtime_error(error);
  const std::size_t shape[3] = {h, w, 3};
  return nb::ndarray<nb::numpy, std::uint8_t, nb::ndim<3>>(out, 3, shape, owner);
}

}  // namespace

NB_MODULE(_jpeg, m) {
  m.doc() = "Decode a rectangle of a JPEG with libjpeg-turbo (service.imaging uses it; no torch).";
  m.def("decode_region", &py_decode_region, nb::arg("data"), nb::arg("denom"), nb::arg("x0"), nb::arg("y0"),
        nb::arg("x1"), nb::arg("y1"),
        "RGB uint8 [y1 - y0, x1 - x0, 3]: the rectangle [x0, x1) x [y0, y1) of the JPEG decoded at 1/denom scale "
        "(pixels of the scaled image). ValueError on bad arguments, RuntimeError on a corrupt or truncated file.");
}
