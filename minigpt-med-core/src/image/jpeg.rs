//! JPEG decoding as the original model's Pillow does it: libjpeg-turbo (feature `jpeg-turbo`,
//! on by default; built from source by `turbojpeg-sys`), ISLOW IDCT, fancy upsampling. The mode
//! follows the component count as Pillow's: 1 -> gray, 3 -> RGB (libjpeg's own colour-space
//! guess from JFIF/Adobe markers), 4 -> CMYK (Adobe-inverted, as Pillow's `CMYK;I` raw mode),
//! converted to RGB with Pillow's `cmyk2rgb`. libjpeg warnings (a malformed EXIF block,
//! extraneous bytes) are ignored as Pillow ignores them; a premature end of data is refused, as
//! Pillow refuses a truncated file.
//!
//! Without the feature (this module is then left out) the `image` crate's pure-Rust decoder is
//! used; `super::jpeg_decoder` says which.

use super::Pixels;
use crate::error::{Error, Result};

/// Whether `bytes` starts like a JPEG (SOI marker).
pub(crate) fn is_jpeg(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0xFF, 0xD8, 0xFF])
}

/// Progressive scans allowed before a file counts as a decompression bomb (libjpeg-turbo's
/// documentation suggests a limit; real files have a dozen at most).
const SCAN_LIMIT: i32 = 500;

/// Decodes a JPEG to `(width, height, pixels)`, checking the header's size against `max_pixels`
/// and [`super::MAX_SIDE`] before any pixel buffer is allocated.
pub(crate) fn decode(bytes: &[u8], name: Option<&str>, max_pixels: u64) -> Result<(usize, usize, Pixels)> {
    use turbojpeg_sys as tj;
    let err = |reason: String| Error::image(name, reason);

    /// The decompressor, destroyed on every path out.
    struct Handle(tj::tjhandle);
    impl Drop for Handle {
        fn drop(&mut self) {
            // SAFETY: a live handle from `tj3Init`, destroyed once.
            unsafe { tj::tj3Destroy(self.0) }
        }
    }
    impl Handle {
        fn message(&self) -> String {
            // SAFETY: the handle is live; the string is NUL-terminated and owned by it.
            let s = unsafe { std::ffi::CStr::from_ptr(tj::tj3GetErrorStr(self.0)) };
            s.to_string_lossy().into_owned()
        }
        fn get(&self, param: tj::TJPARAM) -> i32 {
            // SAFETY: the handle is live.
            unsafe { tj::tj3Get(self.0, param as i32) }
        }
        fn set(&self, param: tj::TJPARAM, value: i32) {
            // SAFETY: the handle is live. Setting a parameter it knows cannot fail.
            unsafe { tj::tj3Set(self.0, param as i32, value) };
        }
    }

    // SAFETY: plain constructor; a NULL result is checked.
    let raw = unsafe { tj::tj3Init(tj::TJINIT_TJINIT_DECOMPRESS as i32) };
    if raw.is_null() {
        return Err(err("libjpeg-turbo could not start a decompressor (out of memory?)".into()));
    }
    let h = Handle(raw);
    // SAFETY: `bytes` is valid for `bytes.len()` reads during the call.
    if unsafe { tj::tj3DecompressHeader(h.0, bytes.as_ptr(), bytes.len() as _) } != 0 {
        return Err(err(format!("cannot read the JPEG header: {}", h.message())));
    }
    let size = |p| usize::try_from(h.get(p)).unwrap_or(0);
    let (w, hgt) = (size(tj::TJPARAM_TJPARAM_JPEGWIDTH), size(tj::TJPARAM_TJPARAM_JPEGHEIGHT));
    super::check_size(w, hgt, max_pixels).map_err(|e| super::rename(e, name))?;
    if h.get(tj::TJPARAM_TJPARAM_PRECISION) != 8 || h.get(tj::TJPARAM_TJPARAM_LOSSLESS) == 1 {
        return Err(err(format!(
            "a {}-bit{} JPEG: only 8-bit lossy JPEG is supported (as by Pillow)",
            h.get(tj::TJPARAM_TJPARAM_PRECISION),
            if h.get(tj::TJPARAM_TJPARAM_LOSSLESS) == 1 { " lossless" } else { "" }
        )));
    }
    let colorspace = h.get(tj::TJPARAM_TJPARAM_COLORSPACE);
    let (format, channels) = match colorspace as tj::TJCS {
        tj::TJCS_TJCS_GRAY => (tj::TJPF_TJPF_GRAY, 1),
        tj::TJCS_TJCS_CMYK | tj::TJCS_TJCS_YCCK => (tj::TJPF_TJPF_CMYK, 4),
        _ => (tj::TJPF_TJPF_RGB, 3),
    };
    // Pillow's decoder: ISLOW, fancy upsampling (both libjpeg's defaults, set explicitly).
    h.set(tj::TJPARAM_TJPARAM_FASTDCT, 0);
    h.set(tj::TJPARAM_TJPARAM_FASTUPSAMPLE, 0);
    h.set(tj::TJPARAM_TJPARAM_STOPONWARNING, 0);
    h.set(tj::TJPARAM_TJPARAM_SCANLIMIT, SCAN_LIMIT);
    h.set(tj::TJPARAM_TJPARAM_MAXPIXELS, i32::try_from(max_pixels).unwrap_or(i32::MAX));
    let mut out = vec![0u8; w * hgt * channels];
    // SAFETY: `bytes` as above; `out` holds `w * hgt` pixels of `channels` bytes, which is what
    // a pitch of 0 (tightly packed) and this pixel format write.
    let status = unsafe { tj::tj3Decompress8(h.0, bytes.as_ptr(), bytes.len() as _, out.as_mut_ptr(), 0, format) };
    if status != 0 {
        let message = h.message();
        // SAFETY: the handle is live.
        let warning = unsafe { tj::tj3GetErrorCode(h.0) } == tj::TJERR_TJERR_WARNING as i32;
        if !warning || message.contains("Premature end") {
            return Err(err(format!("cannot decode the JPEG: {message}; the file is truncated or corrupt")));
        }
    }
    let pixels = match channels {
        1 => Pixels::Gray8(out),
        3 => Pixels::Rgb8(out),
        _ => Pixels::Rgb8(out.chunks_exact(4).flat_map(|p| pillow_cmyk_to_rgb([p[0], p[1], p[2], p[3]])).collect()),
    };
    Ok((w, hgt, pixels))
}

/// Pillow's `CMYK;I` unpacking (Adobe's inverted CMYK, 255 - x) followed by its `cmyk2rgb`.
fn pillow_cmyk_to_rgb(raw: [u8; 4]) -> [u8; 3] {
    let [c, m, y, k] = raw.map(|v| 255 - i32::from(v));
    let nk = 255 - k;
    let muldiv255 = |a: i32, b: i32| {
        let t = a * b + 128;
        ((t >> 8) + t) >> 8
    };
    [c, m, y].map(|v| (nk - muldiv255(v, nk)).clamp(0, 255) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmyk_follows_pillow() {
        // Raw (inverted) 255 means 0 ink: white; raw 0 for K means full black.
        assert_eq!(pillow_cmyk_to_rgb([255, 255, 255, 255]), [255, 255, 255]);
        assert_eq!(pillow_cmyk_to_rgb([255, 255, 255, 0]), [0, 0, 0]);
        // Full cyan ink, no black: R = 255 - MULDIV255(255, 255) = 0.
        assert_eq!(pillow_cmyk_to_rgb([0, 255, 255, 255]), [0, 255, 255]);
        // Half cyan (128 ink), half black (k = 128): nk = 127, R = 127 - (128 * 127 + 128) / 255.
        assert_eq!(pillow_cmyk_to_rgb([127, 255, 255, 127]), [63, 127, 127]);
    }
}
