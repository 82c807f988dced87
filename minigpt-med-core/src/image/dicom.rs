//! DICOM input through dicom-rs (feature `dicom`, on by default).
//!
//! What the model sees of a DICOM image, rule by rule (the test fixtures'
//! `tests/fixtures/dicom/make_expected.py` restates the same rules with pydicom + numpy):
//!
//! * **Frame**: the requested one (0-based), by default the middle one, index `frames / 2`.
//! * **Monochrome** (`MONOCHROME1/2`): stored values masked to Bits Stored (sign-extended when
//!   Pixel Representation is 1), then the Modality LUT `v * RescaleSlope + RescaleIntercept`
//!   (top level, else the frame's or the shared functional group). The result is kept as
//!   [`Pixels::GrayF32`] so windows act on real values (Hounsfield units for CT).
//! * **VOI**: a caller's window or preset, else the file's first Window Center/Width (top level,
//!   else functional groups), else the min-max of the rescaled values. Always the DICOM linear
//!   function ([`Window::apply`]), or the file's VOI LUT Function SIGMOID / LINEAR_EXACT with
//!   its own window (PS3.3 C.11.2.1.3). A file with a VOI LUT Sequence is refused unless the
//!   caller gives a window (pydicom would apply the LUT); a Modality LUT Sequence is refused.
//! * **MONOCHROME1** is inverted after windowing (`255 - y`) so that air is black, as in
//!   MONOCHROME2 images.
//! * **Colour**: RGB as is; YBR_FULL and YBR_FULL_422 converted to RGB (BT.601 full range;
//!   compressed JPEG/JPEG 2000 data comes out of the decoder already in RGB); samples wider
//!   than 8 bits keep their top 8 bits. **PALETTE COLOR**: the Red/Green/Blue LUTs (not the
//!   segmented form), 16-bit entries keep their high byte.
//! * **Transfer syntaxes**: uncompressed (implicit/explicit LE, explicit BE), deflated, RLE,
//!   JPEG baseline/extended/lossless, and JPEG 2000 with the `dicom-j2k` feature. Anything
//!   else is an [`Error::Image`] naming the transfer syntax.
//!
//! Hostile input: the header is validated (sizes, bit depths, frame index, pixel limit, the
//! dimensions a compressed codestream declares) before any pixel buffer is allocated, the
//! pixel data must hold the declared bytes, RLE is decoded here with every offset and run
//! checked, 8-bit lossy JPEG goes through libjpeg-turbo (as pydicom's Pillow handler, bit-exact), and dicom-rs runs inside `contain` (a contained panic fails the test suites).

use std::borrow::Cow;

use dicom_core::header::HasLength;
use dicom_dictionary_std::tags;
use dicom_object::file::ReadPreamble;
use dicom_object::{DefaultDicomObject, OpenFileOptions, Tag};
use dicom_pixeldata::PixelDecoder;
use dicom_transfer_syntax_registry::{TransferSyntaxIndex, TransferSyntaxRegistry};

use super::{DicomInfo, Pixels, Window};
use crate::error::{Error, Result};

const RLE_LOSSLESS: &str = "1.2.840.10008.1.2.5";

/// A decoded DICOM frame.
pub(crate) struct Decoded {
    /// A VOI transform of the file's that is not applied (a VOI LUT Sequence, a SIGMOID or
    /// LINEAR_EXACT function): rendering with the file's own window is refused, a caller's
    /// window renders linearly.
    pub unsupported_voi: Option<String>,
    pub width: usize,
    pub height: usize,
    pub pixels: Pixels,
    /// MONOCHROME1: invert after windowing.
    pub invert: bool,
    pub info: DicomInfo,
}

/// Offset of the `DICM` magic: 128 after the standard preamble, 0 for a file without one.
pub(crate) fn magic_offset(bytes: &[u8]) -> Option<usize> {
    if bytes.get(128..132) == Some(b"DICM") {
        Some(128)
    } else if bytes.starts_with(b"DICM") {
        Some(0)
    } else {
        None
    }
}

/// Runs third-party decoding code, turning a panic into an [`Error::Image`].
fn guarded<T>(name: Option<&str>, what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    crate::contain::contain(f).unwrap_or_else(|msg| {
        Err(Error::image(name, format!("{what} failed on malformed data (decoder panic: {msg}); the file is corrupt")))
    })
}

/// Decodes one frame of a DICOM file held in memory (`bytes` starts with the preamble or `DICM`).
pub(crate) fn decode(bytes: &[u8], frame: Option<usize>, max_pixels: u64, name: Option<&str>) -> Result<Decoded> {
    let err = |reason: String| Error::image(name, reason);
    let start = magic_offset(bytes).ok_or_else(|| err("not a DICOM file (no DICM magic)".into()))?;
    // dicom-rs allocates (and zeroes) each value's declared length before reading it, so a
    // hostile 4 GiB length would be honoured: check every length against the bytes first.
    guarded(name, "DICOM length check", || check_lengths(&bytes[start..], max_pixels).map_err(err))?;
    let obj = guarded(name, "DICOM parsing", || {
        OpenFileOptions::new()
            .read_preamble(ReadPreamble::Never)
            .from_reader(&bytes[start..])
            .map_err(|e| err(format!("cannot parse the DICOM file (truncated or corrupt?): {e}")))
    })?;
    guarded(name, "DICOM pixel decoding", || decode_object(&obj, frame, max_pixels, name))
}

/// Walks the file's elements (meta group, then the data set in its transfer syntax) and fails
/// if any value claims more bytes than remain, so that no allocation exceeds the input size.
/// Sequences and items are descended into; encapsulated pixel fragments are skipped.
fn check_lengths(bytes: &[u8], max_pixels: u64) -> std::result::Result<(), String> {
    let mut pos = 4; // after "DICM"
    let mut ts = String::new();
    while bytes.len() >= pos + 8 && bytes[pos..pos + 2] == [2, 0] {
        let (hdr, len) = explicit_header(&bytes[pos..], true).ok_or("truncated file meta group")?;
        let end = (pos + hdr).checked_add(len).filter(|&e| e <= bytes.len()).ok_or("truncated file meta group")?;
        if bytes[pos + 2..pos + 4] == [0x10, 0] {
            ts = String::from_utf8_lossy(&bytes[pos + hdr..end]).trim_matches(['\0', ' ']).to_string();
        }
        pos = end;
    }
    let rest = &bytes[pos..];
    match ts.as_str() {
        "1.2.840.10008.1.2" => walk(rest, true, false),
        "1.2.840.10008.1.2.2" => walk(rest, false, true),
        "1.2.840.10008.1.2.1.99" => {
            // Deflated data set: inflate with a cap, so a deflate bomb fails here.
            use std::io::Read;
            let cap = max_pixels.saturating_mul(16).min(1 << 30);
            let mut inflated = Vec::new();
            flate2::read::DeflateDecoder::new(rest)
                .take(cap + 1)
                .read_to_end(&mut inflated)
                .map_err(|e| format!("corrupt deflated data set: {e}"))?;
            if inflated.len() as u64 > cap {
                return Err(format!("the deflated data set inflates beyond {cap} bytes (decompression bomb?)"));
            }
            walk(&inflated, true, true)
        }
        _ => walk(rest, true, true),
    }
}

/// Header size and value length of an explicit-VR element at the start of `d`.
fn explicit_header(d: &[u8], le: bool) -> Option<(usize, usize)> {
    let u16_at = |o: usize| {
        d.get(o..o + 2).map(|b| if le { u16::from_le_bytes([b[0], b[1]]) } else { u16::from_be_bytes([b[0], b[1]]) })
    };
    let u32_at = |o: usize| {
        d.get(o..o + 4).map(|b| {
            if le {
                u32::from_le_bytes([b[0], b[1], b[2], b[3]])
            } else {
                u32::from_be_bytes([b[0], b[1], b[2], b[3]])
            }
        })
    };
    let vr = d.get(4..6)?;
    // As dicom-rs reads it: these VRs have a 2-byte length, every other (unknown ones
    // included, read as UN) 2 reserved bytes and a 4-byte length.
    let short = [
        b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"PN", b"SH", b"SL", b"SS",
        b"ST", b"TM", b"UI", b"UL", b"US",
    ];
    if short.iter().any(|s| s[..] == *vr) {
        Some((8, usize::from(u16_at(6)?)))
    } else {
        Some((12, u32_at(8)? as usize))
    }
}

fn walk(d: &[u8], le: bool, explicit: bool) -> std::result::Result<(), String> {
    use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry, VirtualVr};
    use dicom_core::VR;
    const UNDEFINED: usize = 0xFFFF_FFFF;
    let u16_at = |o: usize| {
        if le {
            u16::from_le_bytes([d[o], d[o + 1]])
        } else {
            u16::from_be_bytes([d[o], d[o + 1]])
        }
    };
    let u32_at = |o: usize| {
        (if le {
            u32::from_le_bytes([d[o], d[o + 1], d[o + 2], d[o + 3]])
        } else {
            u32::from_be_bytes([d[o], d[o + 1], d[o + 2], d[o + 3]])
        }) as usize
    };
    let (mut pos, mut in_fragments) = (0usize, false);
    // Fewer than 8 bytes cannot hold an element: trailing padding, left to the parser.
    while d.len() >= pos + 8 {
        let (group, element) = (u16_at(pos), u16_at(pos + 2));
        let (hdr, len, descend) = if group == 0xFFFE {
            // Item / delimiters: tag + 4-byte length, no VR. Items hold elements, except
            // inside encapsulated Pixel Data, where they hold compressed fragments. Group
            // FFFE holds nothing else: any other element there is refused (a parser would
            // read it as some element of its own guess, whose length nothing checked).
            if ![0xE000, 0xE00D, 0xE0DD].contains(&element) {
                return Err(format!("invalid item tag (FFFE,{element:04X}); the file is corrupt"));
            }
            let len = u32_at(pos + 4);
            if element == 0xE0DD {
                in_fragments = false;
            }
            (8, len, !(in_fragments && element == 0xE000))
        } else if explicit {
            let (hdr, len) = explicit_header(&d[pos..], le).ok_or("truncated element header")?;
            // A UN element of undefined length is walked into like a sequence, in this same
            // syntax: that is how dicom-rs reads it (the standard's implicit-VR content then
            // fails there, with an error), so every length it will read is checked here.
            (hdr, len, &d[pos + 4..pos + 6] == b"SQ")
        } else {
            let sq = dicom_dictionary_std::StandardDataDictionary
                .by_tag(Tag(group, element))
                .is_some_and(|e| e.vr() == VirtualVr::Exact(VR::SQ));
            (8, u32_at(pos + 4), sq)
        };
        if len == UNDEFINED {
            if (group, element) == (0x7FE0, 0x0010) {
                in_fragments = true;
            }
            pos += hdr;
        } else if descend {
            pos += hdr;
        } else {
            if pos + hdr + len > d.len() {
                return Err(format!(
                    "element ({group:04X},{element:04X}) declares {len} bytes but only {} remain; the file is truncated or corrupt",
                    d.len().saturating_sub(pos + hdr)
                ));
            }
            pos += hdr + len;
        }
    }
    Ok(())
}

/// The header fields that drive decoding, read and validated before touching pixel data.
struct Header {
    rows: usize,
    cols: usize,
    samples: usize,
    bits_allocated: u16,
    bits_stored: u16,
    signed: bool,
    planar: bool,
    photometric: String,
    frames: usize,
}

fn decode_object(
    obj: &DefaultDicomObject,
    frame: Option<usize>,
    max_pixels: u64,
    name: Option<&str>,
) -> Result<Decoded> {
    let err = |reason: String| Error::image(name, reason);
    let ts_uid = obj.meta().transfer_syntax().to_string();
    let ts = TransferSyntaxRegistry.get(&ts_uid);
    let ts_name = ts.map_or_else(|| ts_uid.clone(), |t| t.name().to_string());

    let h = header(obj).map_err(err)?;
    if (h.rows as u64) * (h.cols as u64) > max_pixels {
        return Err(err(format!(
            "{}x{} exceeds the {max_pixels}-pixel limit (ImageOptions::max_pixels); downscale it first",
            h.cols, h.rows
        )));
    }
    let frame = frame.unwrap_or(h.frames / 2);
    if frame >= h.frames {
        return Err(Error::InvalidOption(format!(
            "frame {frame} requested, but {} has {} frame(s) (0-based: 0..={})",
            name.unwrap_or("the image"),
            h.frames,
            h.frames - 1
        )));
    }
    let supported = ts.is_some_and(|t| t.can_decode_all());
    if !supported {
        let hint = if ts_name.contains("JPEG 2000") && !cfg!(feature = "dicom-j2k") {
            "rebuild minigpt-med with the `dicom-j2k` feature, or convert the file"
        } else {
            "convert it to an uncompressed transfer syntax first, e.g. `gdcmconv --raw in.dcm out.dcm`"
        };
        return Err(err(format!(
            "transfer syntax {ts_uid} ({ts_name}) has no pure-Rust decoder in this build; {hint}"
        )));
    }

    let pixel = obj
        .element_opt(tags::PIXEL_DATA)
        .ok()
        .flatten()
        .ok_or_else(|| err("no Pixel Data (7FE0,0010): not an image object".into()))?;
    let ybr422 = h.photometric == "YBR_FULL_422";
    let (data, photometric): (Cow<[u8]>, &str) = if let Some(fragments) = pixel.fragments() {
        if ts_uid != RLE_LOSSLESS {
            check_codestreams(fragments.iter().map(|f| f.as_slice()), &h).map_err(err)?;
        }
        let mut data = if let Some(d) = jpeg_frame(fragments, frame, &h, &ts_uid, max_pixels, name)? {
            d
        } else if ts_uid == RLE_LOSSLESS {
            let fragment = fragments.get(frame).ok_or_else(|| {
                err(format!("RLE Pixel Data holds {} fragment(s), frame {frame} has none", fragments.len()))
            })?;
            rle_frame(fragment, &h).map_err(|e| err(format!("frame {frame} (RLE Lossless): {e}")))?
        } else {
            let decoded = obj
                .decode_pixel_data_frame(frame as u32)
                .map_err(|e| err(format!("cannot decode frame {frame} ({ts_name}): {e}")))?;
            decoded.into_data()
        };
        let want = h.rows * h.cols * h.samples * usize::from(h.bits_allocated.div_ceil(8));
        if data.len() < want {
            return Err(err(format!(
                "frame {frame} decoded to {} bytes, {}x{}x{} samples of {} bits need {want}; the codestream is truncated or does not match the header",
                data.len(), h.cols, h.rows, h.samples, h.bits_allocated
            )));
        }
        data.truncate(want);
        // JPEG and JPEG 2000 decoders output RGB; RLE keeps the stored colour space.
        let photometric = if h.samples == 3 && ts_uid != RLE_LOSSLESS { "RGB" } else { h.photometric.as_str() };
        (Cow::Owned(data), photometric)
    } else {
        let all = pixel.to_bytes().map_err(|e| err(format!("unreadable Pixel Data: {e}")))?;
        (Cow::Owned(native_frame(&all, frame, &h, ybr422).map_err(err)?), h.photometric.as_str())
    };
    // Native YBR_FULL_422 is subsampled: expand it to one Y, Cb, Cr triple per pixel.
    let data = if ybr422 && photometric == "YBR_FULL_422" { Cow::Owned(expand_422(&data, h.cols)) } else { data };
    let native = pixel.fragments().is_none();

    let mut info = DicomInfo {
        transfer_syntax: ts_uid.clone(),
        transfer_syntax_name: ts_name,
        photometric: h.photometric.clone(),
        modality: obj
            .element_opt(tags::MODALITY)
            .ok()
            .flatten()
            .and_then(|e| e.to_str().ok())
            .map(|s| s.trim().to_string()),
        frames: h.frames,
        frame,
        bits_allocated: h.bits_allocated,
        bits_stored: h.bits_stored,
        rescale_slope: 1.0,
        rescale_intercept: 0.0,
        file_window: None,
    };
    let invert = photometric == "MONOCHROME1";
    let present = |tag: Tag| obj.element_opt(tag).ok().flatten().is_some();
    let mut unsupported_voi = None;
    let pixels = match photometric {
        "MONOCHROME1" | "MONOCHROME2" => {
            if present(tags::MODALITY_LUT_SEQUENCE) {
                return Err(err(
                    "a Modality LUT Sequence (0028,3000) maps its values, which this engine does not apply; \
                     convert the file to Rescale Slope/Intercept or export the image"
                        .into(),
                ));
            }
            let function = obj
                .element_opt(tags::VOILUT_FUNCTION)
                .ok()
                .flatten()
                .and_then(|e| e.to_str().ok())
                .map(|s| s.trim().to_ascii_uppercase());
            let voi = match function.as_deref() {
                Some("SIGMOID") => super::VoiFunction::Sigmoid,
                Some("LINEAR_EXACT") => super::VoiFunction::LinearExact,
                _ => super::VoiFunction::Linear,
            };
            // pydicom prefers the LUT to a window when both are there: refused either way.
            if present(tags::VOILUT_SEQUENCE) {
                unsupported_voi = Some("a VOI LUT Sequence (0028,3010)".to_string());
            }
            let slope = frame_f64(obj, tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE, tags::RESCALE_SLOPE, frame).unwrap_or(1.0);
            let intercept =
                frame_f64(obj, tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE, tags::RESCALE_INTERCEPT, frame).unwrap_or(0.0);
            info.rescale_slope = slope;
            info.rescale_intercept = intercept;
            let center = frame_f64(obj, tags::FRAME_VOILUT_SEQUENCE, tags::WINDOW_CENTER, frame);
            let width = frame_f64(obj, tags::FRAME_VOILUT_SEQUENCE, tags::WINDOW_WIDTH, frame);
            // The file's window carries its VOI LUT Function (SIGMOID, LINEAR_EXACT or LINEAR).
            info.file_window = center.zip(width).and_then(|(c, w)| Window::new(c, w).ok()).map(|w| w.with_function(voi));
            let values = stored_values(&data, &h, native, h.signed).map(|v| (v as f64 * slope + intercept) as f32).collect();
            Pixels::GrayF32(values)
        }
        "RGB" => Pixels::Rgb8(rgb8(&data, &h, native)),
        "YBR_FULL" | "YBR_FULL_422" => Pixels::Rgb8(ybr_to_rgb(&rgb8(&data, &h, native))),
        "PALETTE COLOR" => Pixels::Rgb8(palette(obj, &data, &h, native).map_err(err)?),
        other => {
            return Err(err(format!(
                "Photometric Interpretation {other:?} is not supported (use MONOCHROME1/2, RGB, YBR_FULL(_422) or PALETTE COLOR)"
            )))
        }
    };
    Ok(Decoded { width: h.cols, height: h.rows, pixels, invert, info, unsupported_voi })
}

fn header(obj: &DefaultDicomObject) -> std::result::Result<Header, String> {
    let int = |tag: Tag, what: &str| -> std::result::Result<Option<i64>, String> {
        match obj.element_opt(tag).ok().flatten() {
            None => Ok(None),
            Some(e) if e.is_empty() => Ok(None),
            Some(e) => e.to_int::<i64>().map(Some).map_err(|e| format!("invalid {what}: {e}")),
        }
    };
    let required = |tag: Tag, what: &str| int(tag, what)?.ok_or_else(|| format!("missing {what}: not an image object"));
    let rows = required(tags::ROWS, "Rows")?;
    let cols = required(tags::COLUMNS, "Columns")?;
    if !(1..=65535).contains(&rows) || !(1..=65535).contains(&cols) {
        return Err(format!("invalid size {cols}x{rows} (Columns x Rows must be 1..=65535)"));
    }
    let photometric = obj
        .element_opt(tags::PHOTOMETRIC_INTERPRETATION)
        .ok()
        .flatten()
        .and_then(|e| e.to_str().ok().map(|s| s.trim_matches([' ', '\0']).to_ascii_uppercase()))
        .ok_or("missing Photometric Interpretation")?;
    let samples = int(tags::SAMPLES_PER_PIXEL, "Samples per Pixel")?.unwrap_or(1);
    let bits_allocated = required(tags::BITS_ALLOCATED, "Bits Allocated")?;
    let bits_stored = int(tags::BITS_STORED, "Bits Stored")?.unwrap_or(bits_allocated);
    let signed = int(tags::PIXEL_REPRESENTATION, "Pixel Representation")?.unwrap_or(0) == 1;
    let planar = int(tags::PLANAR_CONFIGURATION, "Planar Configuration")?.unwrap_or(0) == 1;
    let frames = int(tags::NUMBER_OF_FRAMES, "Number of Frames")?.unwrap_or(1);
    let colour = matches!(photometric.as_str(), "RGB" | "YBR_FULL" | "YBR_FULL_422" | "YBR_RCT" | "YBR_ICT");
    if samples != if colour { 3 } else { 1 } {
        return Err(format!("Samples per Pixel {samples} does not fit Photometric Interpretation {photometric}"));
    }
    if ![1, 8, 16, 32].contains(&bits_allocated) || (bits_allocated == 1 && samples != 1) {
        return Err(format!("Bits Allocated {bits_allocated} is not supported (1 for monochrome, 8, 16 or 32)"));
    }
    if !(1..=bits_allocated).contains(&bits_stored) {
        return Err(format!("Bits Stored {bits_stored} is invalid for Bits Allocated {bits_allocated}"));
    }
    if photometric == "PALETTE COLOR" && bits_allocated > 16 {
        return Err("PALETTE COLOR needs 8- or 16-bit indices".into());
    }
    if !(1..=i64::from(u32::MAX)).contains(&frames) {
        return Err(format!("invalid Number of Frames {frames}"));
    }
    Ok(Header {
        rows: rows as usize,
        cols: cols as usize,
        samples: samples as usize,
        bits_allocated: bits_allocated as u16,
        bits_stored: bits_stored as u16,
        signed,
        planar,
        photometric,
        frames: frames as usize,
    })
}

/// A numeric attribute for `frame`: top level, else the per-frame functional group `seq`,
/// else the shared one; the first value when several are stored.
fn frame_f64(obj: &DefaultDicomObject, seq: Tag, tag: Tag, frame: usize) -> Option<f64> {
    let first =
        |e: &dicom_object::mem::InMemElement| e.to_multi_float64().ok()?.first().copied().filter(|v| v.is_finite());
    if let Some(e) = obj.element_opt(tag).ok().flatten() {
        return first(e);
    }
    let group = |fg: Tag, index: usize| {
        let item = obj.element_opt(fg).ok().flatten()?.items()?.get(index)?;
        let inner = item.element_opt(seq).ok().flatten()?.items()?.first()?;
        first(inner.element_opt(tag).ok().flatten()?)
    };
    group(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE, frame)
        .or_else(|| group(tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE, 0))
}

/// The bytes of `frame` in uncompressed Pixel Data, checked against the declared size.
fn native_frame(all: &[u8], frame: usize, h: &Header, ybr422: bool) -> std::result::Result<Vec<u8>, String> {
    let pixels = h.rows * h.cols;
    if h.bits_allocated == 1 {
        // Bit-packed, frames not necessarily byte aligned: unpack to one 0/1 byte per pixel.
        let (first, end) = (frame * pixels, (frame + 1) * pixels);
        if end.div_ceil(8) > all.len() {
            return Err(format!(
                "Pixel Data holds {} bytes, frame {frame} needs {}; the file is truncated",
                all.len(),
                end.div_ceil(8)
            ));
        }
        return Ok((first..end).map(|i| (all[i / 8] >> (i % 8)) & 1).collect());
    }
    let bytes = usize::from(h.bits_allocated / 8);
    let len = if ybr422 {
        if !h.cols.is_multiple_of(2) || h.bits_allocated != 8 {
            return Err("YBR_FULL_422 needs an even width and 8-bit samples".into());
        }
        pixels * 2
    } else {
        pixels * h.samples * bytes
    };
    let range = frame * len..(frame + 1) * len;
    all.get(range.clone()).map(<[u8]>::to_vec).ok_or_else(|| {
        format!(
            "Pixel Data holds {} bytes, but frame {frame} of {}x{}x{} samples of {} bits needs bytes up to {}; the file is truncated or the header is wrong",
            all.len(), h.cols, h.rows, h.samples, h.bits_allocated, range.end
        )
    })
}

/// JPEG Baseline (Process 1) and Extended (Processes 2 & 4): the 8-bit lossy syntaxes.
#[cfg(feature = "jpeg-turbo")]
const JPEG_LOSSY: [&str; 2] = ["1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51"];

/// Decodes a frame of 8-bit lossy JPEG Pixel Data with libjpeg-turbo, as pydicom's Pillow
/// handler does (bit-exact with it, where dicom-rs's pure-Rust decoder rounds differently):
/// `Ok(None)` for other syntaxes, or a fragment layout other than one frame per fragment (or
/// all fragments of a single frame), which dicom-rs then decodes.
#[cfg(feature = "jpeg-turbo")]
fn jpeg_frame(
    fragments: &[Vec<u8>],
    frame: usize,
    h: &Header,
    ts_uid: &str,
    max_pixels: u64,
    name: Option<&str>,
) -> Result<Option<Vec<u8>>> {
    if !JPEG_LOSSY.contains(&ts_uid) || h.bits_allocated != 8 {
        return Ok(None);
    }
    let joined;
    let stream: &[u8] = match fragments {
        [one] if h.frames == 1 => one,
        _ if h.frames == 1 => {
            joined = fragments.concat();
            &joined
        }
        _ if fragments.len() == h.frames => &fragments[frame],
        _ => return Ok(None),
    };
    let (w, rows, pixels) = super::jpeg::decode(stream, name, max_pixels)?;
    if (w, rows) != (h.cols, h.rows) {
        return Err(Error::image(
            name,
            format!("a JPEG frame of {w}x{rows} in a {}x{} image; the file is corrupt", h.cols, h.rows),
        ));
    }
    match (pixels, h.samples) {
        (Pixels::Gray8(v), 1) | (Pixels::Rgb8(v), 3) => Ok(Some(v)),
        (p, samples) => Err(Error::image(
            name,
            format!("a JPEG frame with {} channel(s) for {samples} sample(s) per pixel", p.channels()),
        )),
    }
}

/// Without libjpeg-turbo every JPEG frame goes to dicom-rs.
#[cfg(not(feature = "jpeg-turbo"))]
fn jpeg_frame(_: &[Vec<u8>], _: usize, _: &Header, _: &str, _: u64, _: Option<&str>) -> Result<Option<Vec<u8>>> {
    Ok(None)
}

/// Decodes one RLE Lossless frame (PS3.5 Annex G): one PackBits segment per byte of each
/// sample, most significant first. Output as dicom-rs lays it out: samples interleaved, each
/// little-endian. Every offset and run is bounds-checked (dicom-rs's own decoder indexes
/// unchecked and panics on a short segment).
fn rle_frame(fragment: &[u8], h: &Header) -> std::result::Result<Vec<u8>, String> {
    let bytes = match h.bits_allocated {
        8 => 1,
        16 => 2,
        b => return Err(format!("{b} bits allocated; RLE is supported for 8 and 16")),
    };
    let segments = h.samples * bytes;
    let u32_at = |i: usize| fragment.get(i..i + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
    if fragment.len() < 64 {
        return Err(format!("the fragment has {} bytes, less than the 64-byte RLE header", fragment.len()));
    }
    let declared = u32_at(0).unwrap_or(0);
    if declared != segments {
        return Err(format!(
            "the RLE header declares {declared} segment(s), {} sample(s) of {} bits need {segments}",
            h.samples, h.bits_allocated
        ));
    }
    let mut offsets: Vec<usize> = (0..segments).map(|i| u32_at(4 + 4 * i).unwrap_or(0)).collect();
    offsets.push(fragment.len());
    if offsets[0] != 64 || offsets.windows(2).any(|w| w[0] > w[1]) {
        return Err(format!("the RLE segment offsets {:?} are not increasing from 64", &offsets[..segments]));
    }
    let pixels = h.rows * h.cols;
    let mut out = vec![0u8; pixels * segments];
    let mut plane = vec![0u8; pixels];
    for seg in 0..segments {
        packbits(&fragment[offsets[seg]..offsets[seg + 1]], &mut plane)
            .map_err(|got| format!("RLE segment {seg} decodes to {got} bytes, {pixels} pixels need {pixels}"))?;
        let (sample, k) = (seg / bytes, seg % bytes);
        let at = sample * bytes + (bytes - 1 - k);
        for (p, &v) in plane.iter().enumerate() {
            out[p * segments + at] = v;
        }
    }
    Ok(out)
}

/// Fills `out` from a PackBits stream (extra output is ignored, as the standard allows a
/// padding byte); `Err(n)` when the stream ends after `n < out.len()` bytes.
fn packbits(mut src: &[u8], out: &mut [u8]) -> std::result::Result<(), usize> {
    let mut n = 0;
    while n < out.len() {
        let (&head, rest) = src.split_first().ok_or(n)?;
        src = rest;
        match head as i8 {
            -128 => {}
            c @ 0..=127 => {
                let len = c as usize + 1;
                let run = src.get(..len).ok_or(n)?;
                let take = len.min(out.len() - n);
                out[n..n + take].copy_from_slice(&run[..take]);
                n += take;
                src = &src[len..];
            }
            c => {
                let (&v, rest) = src.split_first().ok_or(n)?;
                src = rest;
                let take = (1 - c as isize) as usize;
                let take = take.min(out.len() - n);
                out[n..n + take].fill(v);
                n += take;
            }
        }
    }
    Ok(())
}

/// Rejects compressed frames whose codestream declares a larger image than the header,
/// before the decoder allocates for it.
fn check_codestreams<'a>(fragments: impl Iterator<Item = &'a [u8]>, h: &Header) -> std::result::Result<(), String> {
    for f in fragments {
        if let Some((w, h2)) = jpeg_size(f).or_else(|| j2k_size(f)) {
            if w as usize > h.cols || h2 as usize > h.rows {
                return Err(format!(
                    "a compressed frame declares {w}x{h2} but the header says {}x{}; the file is corrupt",
                    h.cols, h.rows
                ));
            }
        }
    }
    Ok(())
}

/// Width and height from a JPEG's SOF marker (`None` if `f` is not a JPEG or has none).
fn jpeg_size(f: &[u8]) -> Option<(u32, u32)> {
    if !f.starts_with(&[0xFF, 0xD8]) {
        return None;
    }
    let mut i = 2;
    while i + 4 <= f.len() {
        if f[i] != 0xFF {
            return None;
        }
        let marker = f[i + 1];
        if marker == 0xFF {
            i += 1;
            continue;
        }
        let len = usize::from(u16::from_be_bytes([f[i + 2], f[i + 3]]));
        if (0xC0..=0xCF).contains(&marker) && ![0xC4, 0xC8, 0xCC].contains(&marker) {
            let s = f.get(i + 5..i + 9)?;
            return Some((u32::from(u16::from_be_bytes([s[2], s[3]])), u32::from(u16::from_be_bytes([s[0], s[1]]))));
        }
        if marker == 0xDA {
            return None;
        }
        i += 2 + len;
    }
    None
}

/// Width and height from a JPEG 2000 codestream's SIZ marker.
fn j2k_size(f: &[u8]) -> Option<(u32, u32)> {
    if !f.starts_with(&[0xFF, 0x4F, 0xFF, 0x51]) {
        return None;
    }
    let u32_at = |o: usize| f.get(o..o + 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    // SIZ: marker(2) Lsiz(2) Rsiz(2) Xsiz(4) Ysiz(4) XOsiz(4) YOsiz(4), after SOC (2).
    let (x, y, xo, yo) = (u32_at(8)?, u32_at(12)?, u32_at(16)?, u32_at(20)?);
    Some((x.saturating_sub(xo), y.saturating_sub(yo)))
}

/// Reads sample `i` of `data` (`bytes` wide; native byte order for uncompressed data, little
/// endian for decoder output, which dicom-rs writes little endian).
fn sample(data: &[u8], i: usize, bytes: usize, native: bool) -> u32 {
    let o = i * bytes;
    match (bytes, native) {
        (1, _) => u32::from(data[o]),
        (2, true) => u32::from(u16::from_ne_bytes([data[o], data[o + 1]])),
        (2, false) => u32::from(u16::from_le_bytes([data[o], data[o + 1]])),
        (_, true) => u32::from_ne_bytes([data[o], data[o + 1], data[o + 2], data[o + 3]]),
        (_, false) => u32::from_le_bytes([data[o], data[o + 1], data[o + 2], data[o + 3]]),
    }
}

/// Stored monochrome values: masked to Bits Stored, sign-extended when signed.
fn stored_values<'a>(data: &'a [u8], h: &Header, native: bool, signed: bool) -> impl Iterator<Item = i64> + 'a {
    let bytes = usize::from(h.bits_allocated.div_ceil(8));
    let (bits, signed) = (u32::from(h.bits_stored), signed && h.bits_allocated > 1);
    let mask = if bits >= 32 { u32::MAX } else { (1u32 << bits) - 1 };
    (0..h.rows * h.cols).map(move |i| {
        let v = i64::from(sample(data, i, bytes, native) & mask);
        if signed && v >> (bits - 1) & 1 == 1 {
            v - (1i64 << bits)
        } else {
            v
        }
    })
}

/// Interleaved 8-bit colour samples (planar configuration undone, wide samples narrowed).
fn rgb8(data: &[u8], h: &Header, native: bool) -> Vec<u8> {
    let bytes = usize::from(h.bits_allocated / 8);
    let n = h.rows * h.cols;
    let shift = u32::from(h.bits_stored.saturating_sub(8));
    let mask = if h.bits_stored >= 32 { u32::MAX } else { (1u32 << h.bits_stored) - 1 };
    // Uncompressed data may be planar (RRR..GGG..BBB); decoder output is always interleaved.
    let planar = native && h.planar;
    (0..n * 3)
        .map(|k| {
            let (p, c) = (k / 3, k % 3);
            let i = if planar { c * n + p } else { k };
            ((sample(data, i, bytes, native) & mask) >> shift) as u8
        })
        .collect()
}

/// YBR_FULL_422 (Y0 Y1 Cb Cr per pixel pair) to one Y Cb Cr triple per pixel.
fn expand_422(data: &[u8], cols: usize) -> Vec<u8> {
    debug_assert!(cols.is_multiple_of(2));
    data.chunks_exact(4).flat_map(|q| [q[0], q[2], q[3], q[1], q[2], q[3]]).collect()
}

/// YCbCr (full range, BT.601) to RGB, as PS3.3 C.7.6.3.1.2 defines YBR_FULL.
fn ybr_to_rgb(ybr: &[u8]) -> Vec<u8> {
    ybr.chunks_exact(3)
        .flat_map(|p| {
            let (y, cb, cr) = (f64::from(p[0]), f64::from(p[1]) - 128.0, f64::from(p[2]) - 128.0);
            let c = |v: f64| v.round().clamp(0.0, 255.0) as u8;
            [c(y + 1.402 * cr), c(y - 0.344_136 * cb - 0.714_136 * cr), c(y + 1.772 * cb)]
        })
        .collect()
}

/// PALETTE COLOR: each stored index looked up in the Red/Green/Blue Palette Color LUTs.
fn palette(obj: &DefaultDicomObject, data: &[u8], h: &Header, native: bool) -> std::result::Result<Vec<u8>, String> {
    if obj.element_opt(tags::SEGMENTED_RED_PALETTE_COLOR_LOOKUP_TABLE_DATA).ok().flatten().is_some() {
        return Err("segmented palette colour LUTs are not supported".into());
    }
    let lut = |desc: Tag, data_tag: Tag| -> std::result::Result<(Vec<u8>, i64), String> {
        let d = obj
            .element_opt(desc)
            .ok()
            .flatten()
            .and_then(|e| e.to_multi_int::<i64>().ok())
            .filter(|d| d.len() == 3)
            .ok_or("missing or invalid Palette Color LUT Descriptor")?;
        let entries = if d[0] == 0 { 65536 } else { d[0] as usize };
        let raw = obj
            .element_opt(data_tag)
            .ok()
            .flatten()
            .and_then(|e| e.to_bytes().ok())
            .ok_or("missing Palette Color LUT Data")?;
        let table: Vec<u8> = if raw.len() >= 2 * entries {
            // 16-bit words: keep the high byte of 16-bit entries, the value of 8-bit ones.
            raw.chunks_exact(2)
                .take(entries)
                .map(|b| u16::from_ne_bytes([b[0], b[1]]))
                .map(|v| if d[2] == 16 { (v >> 8) as u8 } else { v as u8 })
                .collect()
        } else if raw.len() >= entries {
            raw[..entries].to_vec()
        } else {
            return Err(format!("Palette Color LUT Data holds {} bytes for {entries} entries", raw.len()));
        };
        Ok((table, d[1]))
    };
    let (r, first) = lut(tags::RED_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR, tags::RED_PALETTE_COLOR_LOOKUP_TABLE_DATA)?;
    let (g, _) = lut(tags::GREEN_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR, tags::GREEN_PALETTE_COLOR_LOOKUP_TABLE_DATA)?;
    let (b, _) = lut(tags::BLUE_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR, tags::BLUE_PALETTE_COLOR_LOOKUP_TABLE_DATA)?;
    Ok(stored_values(data, h, native, false)
        .flat_map(|v| {
            let at = |t: &[u8]| t[(v - first).clamp(0, t.len() as i64 - 1) as usize];
            [at(&r), at(&g), at(&b)]
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_codestream_sizes() {
        let mut jpeg = vec![0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x04, 0, 0];
        jpeg.extend([0xFF, 0xC0, 0x00, 0x0B, 8, 0x01, 0x00, 0x02, 0x00, 1, 0, 0, 0]);
        assert_eq!(jpeg_size(&jpeg), Some((512, 256)));
        let mut j2k = vec![0xFF, 0x4F, 0xFF, 0x51, 0, 41, 0, 0];
        j2k.extend(64u32.to_be_bytes());
        j2k.extend(32u32.to_be_bytes());
        j2k.extend([0u8; 8]);
        assert_eq!(j2k_size(&j2k), Some((64, 32)));
        assert_eq!(jpeg_size(&[0xFF, 0xD8, 0xFF]), None);
    }

    #[test]
    fn ybr_round_trip_is_close() {
        // Pure red in YCbCr full range: Y 76.2, Cb 85.0, Cr 255.5.
        assert_eq!(ybr_to_rgb(&[76, 85, 255]), vec![254, 0, 0]);
        assert_eq!(expand_422(&[1, 2, 3, 4], 2), vec![1, 3, 4, 2, 3, 4]);
    }
}
