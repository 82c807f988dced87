//! Unit tests of the ABI, calling the `extern "C"` functions exactly as C would: NULL handling,
//! invalid UTF-8, out-of-range values, status codes and messages, and generation on the
//! bundled tiny model checked against the reference implementation's token ids.

use std::ffi::{c_char, c_void, CStr, CString};
use std::path::PathBuf;
use std::ptr::{null, null_mut};
use std::sync::OnceLock;

use super::*;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny")
}

fn cpath(p: PathBuf) -> CString {
    CString::new(p.to_str().unwrap()).unwrap()
}

fn last_error() -> String {
    // SAFETY: mgm_last_error never returns NULL and the string lives until the next call.
    unsafe { CStr::from_ptr(mgm_last_error()) }.to_str().unwrap().to_owned()
}

/// Asserts `status` and that the thread's message mentions `needle`.
#[track_caller]
fn expect(status: Status, want: Status, needle: &str) {
    let msg = last_error();
    assert_eq!(status, want, "message: {msg}");
    assert!(msg.contains(needle), "message {msg:?} lacks {needle:?}");
}

/// The golden greedy ids of a prompt of the reference implementation.
fn golden_ids(prompt: &str) -> Vec<u32> {
    let text = std::fs::read_to_string(fixtures().join("golden.json")).unwrap();
    let g: serde_json::Value = serde_json::from_str(&text).unwrap();
    let p = g["prompts"].as_array().unwrap().iter().find(|p| p["name"] == prompt).unwrap();
    p["generated_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect()
}

/// The tiny model, loaded once through the C ABI and shared by every test (as C programs
/// share one model between threads).
fn model() -> *const Model {
    static MODEL: OnceLock<usize> = OnceLock::new();
    *MODEL.get_or_init(|| {
        let dir = cpath(fixtures());
        let mut m = null_mut();
        // SAFETY: valid arguments.
        let s = unsafe { mgm_model_load_dir(dir.as_ptr(), null(), &mut m) };
        assert_eq!(s, Status::Ok, "{}", last_error());
        m as usize
    }) as *const Model
}

struct OwnedImage(*mut Image);
impl Drop for OwnedImage {
    fn drop(&mut self) {
        // SAFETY: made by the library, freed once.
        unsafe { mgm_image_free(self.0) }
    }
}

fn open_image(name: &str) -> OwnedImage {
    let path = cpath(fixtures().join("images").join(name));
    let mut img = null_mut();
    // SAFETY: valid arguments.
    assert_eq!(unsafe { mgm_image_open(path.as_ptr(), &mut img) }, Status::Ok, "{}", last_error());
    OwnedImage(img)
}

fn greedy(n: u32) -> GenerateParams {
    GenerateParams { max_new_tokens: n, ..mgm_generate_params_default() }
}

/// Ids and text of an answer, which is freed.
fn take(answer: *mut Answer) -> (Vec<u32>, String) {
    let (mut ids, mut n, mut text, mut len) = (null(), 0usize, null(), 0usize);
    // SAFETY: a live answer and writable out-params.
    unsafe {
        assert_eq!(mgm_answer_token_ids(answer, &mut ids, &mut n), Status::Ok);
        assert_eq!(mgm_answer_text(answer, &mut text, &mut len), Status::Ok);
        let ids = if n == 0 { Vec::new() } else { std::slice::from_raw_parts(ids, n).to_vec() };
        let text = std::str::from_utf8(std::slice::from_raw_parts(text.cast::<u8>(), len)).unwrap().to_owned();
        mgm_answer_free(answer);
        (ids, text)
    }
}

fn generate(
    image: &OwnedImage,
    task: Task,
    text: Option<&str>,
    region: Option<Region>,
    params: &GenerateParams,
) -> Result<*mut Answer, (Status, String)> {
    let text = text.map(|t| CString::new(t).unwrap());
    let mut answer = null_mut();
    // SAFETY: valid arguments.
    let s = unsafe {
        mgm_generate(
            model(),
            image.0,
            task as u32,
            text.as_ref().map_or(null(), |t| t.as_ptr()),
            region.as_ref().map_or(null(), |r| r as *const Region),
            params,
            &mut answer,
        )
    };
    if s == Status::Ok {
        assert!(!answer.is_null());
        Ok(answer)
    } else {
        assert!(answer.is_null(), "out-handle must be NULL after a failure");
        Err((s, last_error()))
    }
}

#[test]
fn versions_match_the_crate() {
    let v = env!("CARGO_PKG_VERSION");
    assert_eq!(format!("{MGM_VERSION_MAJOR}.{MGM_VERSION_MINOR}.{MGM_VERSION_PATCH}"), v);
    // SAFETY: a static NUL-terminated string.
    assert_eq!(unsafe { CStr::from_ptr(mgm_version()) }.to_str().unwrap(), v);
    assert_eq!(mgm_abi_version(), MGM_ABI_VERSION);
}

#[test]
fn status_names_cover_every_code() {
    for raw in 0..=15u32 {
        let status = Status::from_raw(raw).unwrap();
        assert_eq!(status as u32, raw);
        // SAFETY: a static NUL-terminated string.
        let name = unsafe { CStr::from_ptr(mgm_status_name(raw)) }.to_str().unwrap();
        assert!(name.starts_with("MGM_STATUS_") && name != "MGM_STATUS_UNKNOWN", "{name}");
    }
    // SAFETY: as above.
    assert_eq!(unsafe { CStr::from_ptr(mgm_status_name(16)) }.to_str().unwrap(), "MGM_STATUS_UNKNOWN");
}

#[test]
fn struct_layouts_start_with_struct_size() {
    // `ptr::params` reads the first u32 before anything else.
    assert_eq!(std::mem::offset_of!(ModelParams, struct_size), 0);
    assert_eq!(std::mem::offset_of!(GenerateParams, struct_size), 0);
    assert_eq!(mgm_model_params_default().struct_size as usize, std::mem::size_of::<ModelParams>());
    assert_eq!(mgm_generate_params_default().struct_size as usize, std::mem::size_of::<GenerateParams>());
    // The ABI promises that one model is shared by threads.
    fn shareable<T: Send + Sync>() {}
    shareable::<Model>();
}

#[test]
fn defaults_come_from_the_engine() {
    let g = mgm_generate_params_default();
    assert_eq!((g.max_new_tokens, g.sampling, g.repetition_penalty, g.context_limit), (300, 0, 1.0, 0));
    assert!(g.on_text.is_none() && g.stop_strings.is_null());
    let m = mgm_model_params_default();
    assert_eq!((m.device, m.llm_dtype, m.vit_dtype), (Device::Cpu as u32, Dtype::F32 as u32, Dtype::F32 as u32));
    assert_eq!(m.kv_dtype, Dtype::F32 as u32);
    assert!(m.llama_dir.is_null() && m.progress.is_none());
}

#[test]
fn null_arguments_are_errors() {
    let mut img = std::ptr::dangling_mut::<Image>(); // not NULL, so that clearing it is observable
                                                     // SAFETY: NULL is what is tested; every out-param given is writable.
    unsafe {
        expect(mgm_image_open(null(), &mut img), Status::InvalidArgument, "path is NULL");
        assert!(img.is_null());
        let path = CString::new("x.png").unwrap();
        expect(mgm_image_open(path.as_ptr(), null_mut()), Status::InvalidArgument, "out_image is NULL");
        expect(mgm_image_from_bytes(null(), 3, &mut img), Status::InvalidArgument, "data is NULL");
        expect(mgm_image_from_pixels(2, 2, 0, 0, null(), &mut img), Status::InvalidArgument, "pixels is NULL");
        let (mut w, mut h) = (0, 0);
        expect(mgm_image_size(null(), &mut w, &mut h), Status::InvalidArgument, "image is NULL");
        expect(mgm_image_set_color_mode(null_mut(), 0), Status::InvalidArgument, "image is NULL");

        let mut m = std::ptr::dangling_mut::<Model>();
        expect(mgm_model_load(null(), &mut m), Status::InvalidArgument, "params is NULL");
        assert!(m.is_null());
        let p = mgm_model_params_default();
        expect(mgm_model_load(&p, &mut m), Status::InvalidArgument, "params->llama_dir is NULL");
        expect(mgm_model_load_dir(null(), null(), &mut m), Status::InvalidArgument, "dir is NULL");

        let image = open_image("ct_nlst.png");
        let mut a = std::ptr::dangling_mut::<Answer>();
        expect(
            mgm_generate(null(), image.0, 0, null(), null(), null(), &mut a),
            Status::InvalidArgument,
            "model is NULL",
        );
        assert!(a.is_null());
        expect(
            mgm_generate(model(), null(), 0, null(), null(), null(), &mut a),
            Status::InvalidArgument,
            "image is NULL",
        );
        expect(
            mgm_generate(model(), image.0, 0, null(), null(), null(), null_mut()),
            Status::InvalidArgument,
            "out_answer",
        );
        let mut c = null_mut();
        expect(mgm_chat_new(null(), image.0, 0, &mut c), Status::InvalidArgument, "model is NULL");
        expect(mgm_chat_ask(null_mut(), 0, null(), null(), null(), &mut a), Status::InvalidArgument, "chat is NULL");
        let mut n = 0;
        expect(mgm_answer_box_count(null(), &mut n), Status::InvalidArgument, "answer is NULL");
        expect(mgm_chat_turns(null(), &mut n), Status::InvalidArgument, "chat is NULL");

        // Frees accept NULL.
        mgm_model_free(null_mut());
        mgm_image_free(null_mut());
        mgm_answer_free(null_mut());
        mgm_chat_free(null_mut());
    }
}

#[test]
fn invalid_utf8_is_an_error() {
    let bad = [b'a', 0xff, 0xfe, 0];
    let mut img = null_mut();
    // SAFETY: a NUL-terminated (non-UTF-8) string and a writable out-param.
    unsafe {
        expect(mgm_image_open(bad.as_ptr().cast(), &mut img), Status::InvalidArgument, "not valid UTF-8");
        let image = open_image("ct_nlst.png");
        let mut a = null_mut();
        expect(
            mgm_generate(model(), image.0, Task::Vqa as u32, bad.as_ptr().cast(), null(), null(), &mut a),
            Status::InvalidArgument,
            "text is not valid UTF-8",
        );
        let stops = [bad.as_ptr().cast::<c_char>()];
        let p = GenerateParams { stop_strings: stops.as_ptr(), stop_strings_len: 1, ..greedy(2) };
        expect(
            mgm_generate(model(), image.0, Task::Report as u32, null(), null(), &p, &mut a),
            Status::InvalidArgument,
            "stop_strings[0]",
        );
    }
}

#[test]
fn zero_threads_is_an_invalid_option() {
    expect(mgm_set_threads(0), Status::InvalidOption, "threads must be at least 1");
}

#[test]
fn out_of_range_values_are_errors() {
    let image = open_image("ct_nlst.png");
    let err = |task: u32, region: Option<Region>, p: GenerateParams| {
        let text = CString::new("x").unwrap();
        let mut a = null_mut();
        // SAFETY: valid pointers; the values are what is tested.
        let s = unsafe {
            mgm_generate(model(), image.0, task, text.as_ptr(), region.as_ref().map_or(null(), |r| r), &p, &mut a)
        };
        assert!(a.is_null());
        (s, last_error())
    };
    let (s, m) = err(99, None, greedy(2));
    assert_eq!(s, Status::InvalidArgument);
    assert!(m.contains("task 99"), "{m}");
    assert_eq!(err(Task::Vqa as u32, None, GenerateParams { sampling: 7, ..greedy(2) }).0, Status::InvalidArgument);
    assert_eq!(err(Task::Vqa as u32, None, GenerateParams { struct_size: 8, ..greedy(2) }).0, Status::InvalidArgument);
    // The engine's own checks come back as MGM_STATUS_INVALID_OPTION.
    assert_eq!(err(Task::Vqa as u32, None, greedy(0)).0, Status::InvalidOption);
    let sample = GenerateParams { sampling: Sampling::Sample as u32, top_p: 1.5, ..greedy(2) };
    assert_eq!(err(Task::Vqa as u32, None, sample).0, Status::InvalidOption);
    let region = |kind: u32, coords| Some(Region { kind, coords });
    for coords in [[0.0, 0.0, 100.5, 5.0], [-1.0, 0.0, 1.0, 1.0], [f64::NAN, 0.0, 1.0, 1.0], [0.5, 0.0, 1.0, 1.0]] {
        // Grid values are the engine's rule: one error, whichever front door.
        let (s, m) = err(Task::Identify as u32, region(0, coords), greedy(2));
        assert_eq!(s, Status::InvalidOption, "{coords:?}");
        assert!(m.contains("not a whole number in 0..=100"), "{m}");
    }
    assert_eq!(err(Task::Identify as u32, region(5, [0.0; 4]), greedy(2)).0, Status::InvalidArgument);
    assert_eq!(
        err(Task::Identify as u32, region(1, [f64::INFINITY, 0.0, 1.0, 1.0]), greedy(2)).0,
        Status::InvalidOption
    );
    let (s, m) = err(Task::Refer as u32, region(0, [1.0, 2.0, 3.0, 4.0]), greedy(2));
    assert_eq!(s, Status::InvalidOption);
    assert!(m.contains("only used by the identify task, not by refer"), "{m}");

    let mut p = mgm_model_params_default();
    let dir = cpath(fixtures());
    let mut m = null_mut();
    for (device, llm, vit, kv) in [(9, 0, 0, 0), (0, 6, 0, 0), (0, 0, 42, 0), (0, 0, 0, Dtype::Q4_0 as u32)] {
        p.device = device;
        p.llm_dtype = llm;
        p.vit_dtype = vit;
        p.kv_dtype = kv;
        // SAFETY: valid pointers.
        expect(unsafe { mgm_model_load_dir(dir.as_ptr(), &p, &mut m) }, Status::InvalidArgument, "not one of");
    }
    let mut img = null_mut();
    let px = [0u8; 4];
    // SAFETY: a 4-byte buffer, enough for every call below.
    unsafe {
        expect(
            mgm_image_from_pixels(2, 2, 0, 3, px.as_ptr().cast(), &mut img),
            Status::InvalidArgument,
            "pixel format 3",
        );
        expect(mgm_image_from_pixels(2, 2, 1, 0, px.as_ptr().cast(), &mut img), Status::InvalidArgument, "stride 1");
        expect(mgm_image_from_pixels(0, 2, 0, 0, px.as_ptr().cast(), &mut img), Status::Image, "zero size");
        // Sizes are checked before the (here 4-byte) buffer is read.
        expect(mgm_image_from_pixels(65_536, 1, 0, 0, px.as_ptr().cast(), &mut img), Status::Image, "side over 65535");
        expect(mgm_image_from_pixels(20_000, 20_000, 0, 0, px.as_ptr().cast(), &mut img), Status::Image, "pixel limit");
        expect(mgm_image_set_color_mode(image.0, 2), Status::InvalidArgument, "color mode 2");
        expect(mgm_image_set_window(image.0, 10.0, 0.0), Status::InvalidOption, "a width > 0");
        let mut n = 0;
        let mut b = std::mem::zeroed();
        let a = generate(&image, Task::Report, None, None, &greedy(1)).unwrap();
        assert_eq!(mgm_answer_box_count(a, &mut n), Status::Ok);
        expect(mgm_answer_box(a, n, &mut b), Status::InvalidArgument, "box index");
        mgm_answer_free(a);
    }
}

#[test]
fn engine_errors_map_to_their_codes() {
    let mut img = null_mut();
    let garbage = b"not an image";
    let missing = CString::new("/nonexistent/dir").unwrap();
    let mut m = null_mut();
    // SAFETY: valid pointers.
    unsafe {
        expect(mgm_image_from_bytes(garbage.as_ptr(), garbage.len(), &mut img), Status::Image, "unusable image");
        expect(mgm_model_load_dir(missing.as_ptr(), null(), &mut m), Status::Io, "/nonexistent/dir");
        assert!(m.is_null());
    }
    let image = open_image("ct_nlst.png");
    let (s, msg) = generate(&image, Task::Vqa, None, None, &greedy(2)).unwrap_err();
    assert_eq!(s, Status::InvalidOption);
    assert!(msg.contains("needs a question"), "{msg}");
    // A later success clears the message.
    let a = generate(&image, Task::Report, None, None, &greedy(1)).unwrap();
    assert_eq!(last_error(), "");
    take(a);
}

#[test]
fn last_error_is_per_thread() {
    let mut img = null_mut();
    // SAFETY: NULL path is the error under test.
    unsafe { mgm_image_open(null(), &mut img) };
    assert!(last_error().contains("path is NULL"));
    std::thread::spawn(|| assert_eq!(last_error(), "")).join().unwrap();
    assert!(last_error().contains("path is NULL"));
}

#[test]
fn generate_matches_the_reference_ids() {
    // PNG inputs decode exactly, so the C ABI must give the reference's greedy ids.
    let ct = open_image("ct_nlst.png");
    let a = generate(&ct, Task::Refer, Some("give me the location of tumor "), None, &greedy(20)).unwrap();
    assert_eq!(take(a).0, golden_ids("p1_refer"));
    let grid = Region { kind: RegionKind::Grid as u32, coords: [12.0, 34.0, 56.0, 78.0] };
    let a = generate(&ct, Task::Identify, None, Some(grid), &greedy(20)).unwrap();
    assert_eq!(take(a).0, golden_ids("p3_identify"));
    let gradient = open_image("synthetic_gradient.png");
    let a = generate(&gradient, Task::Report, None, None, &greedy(20)).unwrap();
    let mut reason = StopReason::Eos;
    // SAFETY: a live answer.
    assert_eq!(unsafe { mgm_answer_stop_reason(a, &mut reason) }, Status::Ok);
    assert_eq!(reason, StopReason::MaxTokens);
    assert_eq!(take(a).0, golden_ids("p4_report"));
}

#[test]
fn an_f16_kv_cache_keeps_the_reference_ids() {
    let dir = cpath(fixtures());
    let p = ModelParams { kv_dtype: Dtype::F16 as u32, ..mgm_model_params_default() };
    let (mut m, mut answer) = (null_mut(), null_mut());
    let gradient = open_image("synthetic_gradient.png");
    // SAFETY: valid arguments; the model is freed once, after its answer.
    unsafe {
        assert_eq!(mgm_model_load_dir(dir.as_ptr(), &p, &mut m), Status::Ok, "{}", last_error());
        let s = mgm_generate(m, gradient.0, Task::Report as u32, null(), null(), &greedy(20), &mut answer);
        assert_eq!(s, Status::Ok, "{}", last_error());
        // p4_report's top two logits stay >= 0.14 apart, beyond an f16 cache's error.
        assert_eq!(take(answer).0, golden_ids("p4_report"));
        mgm_model_free(m);
    }
}

#[test]
fn raw_pixels_with_stride_equal_the_decoded_file() {
    let file = open_image("synthetic_gradient.png");
    let (mut w, mut h) = (0u32, 0u32);
    // SAFETY: a live image.
    assert_eq!(unsafe { mgm_image_size(file.0, &mut w, &mut h) }, Status::Ok);
    assert_eq!((w, h), (300, 200));
    let engine::Pixels::Gray8(gray) = file_pixels(&file) else { panic!("gray PNG") };
    // Rows padded to 320 bytes with junk the library must skip.
    let stride = 320;
    let mut padded = vec![0xAAu8; stride * (h as usize - 1) + w as usize];
    for y in 0..h as usize {
        padded[y * stride..y * stride + w as usize].copy_from_slice(&gray[y * w as usize..][..w as usize]);
    }
    let mut raw = null_mut();
    // SAFETY: the buffer is exactly stride * (h - 1) + w bytes.
    let s = unsafe { mgm_image_from_pixels(w, h, stride, PixelFormat::Gray8 as u32, padded.as_ptr().cast(), &mut raw) };
    assert_eq!(s, Status::Ok, "{}", last_error());
    let raw = OwnedImage(raw);
    assert_eq!(file_pixels(&raw), file_pixels(&file));
    let a = generate(&raw, Task::Report, None, None, &greedy(20)).unwrap();
    assert_eq!(take(a).0, golden_ids("p4_report"));

    // 16-bit values arrive native-endian and unaligned.
    let values: Vec<u16> = vec![0, 1000, 65535, 7];
    let mut bytes = vec![0u8];
    bytes.extend(values.iter().flat_map(|v| v.to_ne_bytes()));
    let mut img = null_mut();
    // SAFETY: 8 readable bytes after the 1-byte offset.
    let s = unsafe { mgm_image_from_pixels(2, 2, 0, PixelFormat::Gray16 as u32, bytes[1..].as_ptr().cast(), &mut img) };
    assert_eq!(s, Status::Ok);
    assert_eq!(file_pixels(&OwnedImage(img)), engine::Pixels::Gray16(values));
}

fn file_pixels(image: &OwnedImage) -> engine::Pixels {
    // SAFETY: a live image made by the library.
    unsafe { &*image.0 }.inner.pixels().clone()
}

unsafe extern "C" fn collect(piece: *const c_char, len: usize, user_data: *mut c_void) -> bool {
    // SAFETY: the library passes `len` bytes + NUL; user_data is the test's (Vec<String>, limit).
    let (pieces, limit) = unsafe { &mut *user_data.cast::<(Vec<String>, usize)>() };
    let bytes = unsafe { std::slice::from_raw_parts(piece.cast::<u8>(), len + 1) };
    assert_eq!(bytes[len], 0, "pieces are NUL-terminated");
    pieces.push(std::str::from_utf8(&bytes[..len]).unwrap().to_owned());
    pieces.len() < *limit
}

#[test]
fn streaming_pieces_make_the_text_and_false_cancels() {
    let ct = open_image("ct_nlst.png");
    let mut state: (Vec<String>, usize) = (Vec::new(), usize::MAX);
    let p = GenerateParams {
        on_text: Some(collect),
        on_text_user_data: (&mut state as *mut (Vec<String>, usize)).cast(),
        ..greedy(20)
    };
    let (ids, text) = take(generate(&ct, Task::Refer, Some("give me the location of tumor "), None, &p).unwrap());
    assert_eq!(ids, golden_ids("p1_refer"));
    assert!(!state.0.is_empty());
    assert_eq!(state.0.concat(), text);

    let mut state: (Vec<String>, usize) = (Vec::new(), 1);
    let p = GenerateParams {
        on_text: Some(collect),
        on_text_user_data: (&mut state as *mut (Vec<String>, usize)).cast(),
        ..greedy(20)
    };
    let a = generate(&ct, Task::Refer, Some("give me the location of tumor "), None, &p).unwrap();
    let mut reason = StopReason::Eos;
    // SAFETY: a live answer.
    assert_eq!(unsafe { mgm_answer_stop_reason(a, &mut reason) }, Status::Ok);
    assert_eq!(reason, StopReason::Cancelled);
    assert_eq!(state.0.len(), 1);
    let (ids, _) = take(a);
    assert!(ids.len() < 20 && golden_ids("p1_refer").starts_with(&ids));
}

#[test]
fn stop_strings_and_timings_pass_through() {
    let ct = open_image("ct_nlst.png");
    let (_, full) =
        take(generate(&ct, Task::Refer, Some("give me the location of tumor "), None, &greedy(20)).unwrap());
    // Stop at a piece of text from the middle of the full answer.
    let cut = full.char_indices().nth(full.chars().count() / 2).unwrap().0;
    let stop = CString::new(full[cut..].chars().take(2).collect::<String>()).unwrap();
    let stops = [stop.as_ptr()];
    let p = GenerateParams { stop_strings: stops.as_ptr(), stop_strings_len: 1, ..greedy(20) };
    let a = generate(&ct, Task::Refer, Some("give me the location of tumor "), None, &p).unwrap();
    let (mut reason, mut t) = (StopReason::Eos, Timings::default());
    // SAFETY: a live answer.
    unsafe {
        assert_eq!(mgm_answer_stop_reason(a, &mut reason), Status::Ok);
        assert_eq!(mgm_answer_timings(a, &mut t), Status::Ok);
    }
    assert_eq!(reason, StopReason::StopString);
    assert!(t.encode_ms > 0.0 && t.prefill_ms > 0.0);
    let (_, text) = take(a);
    assert!(text.len() < full.len());
}

#[test]
fn boxes_come_with_labels_owned_by_the_answer() {
    // The random tiny model writes no boxes, so this checks the accessor on a parsed answer.
    let text = "<p>nodule</p> {<10><20><30><40>} and {<1><2><3><4>}";
    let answer = Box::into_raw(Box::new(Answer::new(engine::Answer {
        text: text.into(),
        boxes: engine::Answer::parse_boxes(text, 200, 100),
        ..Default::default()
    })));
    let (mut n, mut b) = (0, BoundingBox { label: null(), label_len: 0, grid: [0; 4], pixels: [0.0; 4] });
    // SAFETY: a live answer; label pointers read while it lives.
    unsafe {
        assert_eq!(mgm_answer_box_count(answer, &mut n), Status::Ok);
        assert_eq!(n, 2);
        assert_eq!(mgm_answer_box(answer, 0, &mut b), Status::Ok);
        assert_eq!(CStr::from_ptr(b.label).to_str().unwrap(), "nodule");
        assert_eq!(b.label_len, 6);
        assert_eq!(b.grid, [10, 20, 30, 40]);
        assert_eq!(b.pixels, [20.0, 20.0, 60.0, 40.0]);
        assert_eq!(mgm_answer_box(answer, 1, &mut b), Status::Ok);
        assert!(b.label.is_null() && b.label_len == 0);
        mgm_answer_free(answer);
    }
}

#[test]
fn chat_outlives_its_model_handle_and_matches_generate() {
    // A second model handle, freed while its chat still answers.
    let dir = cpath(fixtures());
    let mut m = null_mut();
    // SAFETY: valid pointers throughout; each handle is freed once.
    unsafe {
        assert_eq!(mgm_model_load_dir(dir.as_ptr(), null(), &mut m), Status::Ok);
        let ct = open_image("ct_nlst.png");
        let mut chat = null_mut();
        assert_eq!(mgm_chat_new(m, ct.0, ChatHistory::KeepAnswers as u32, &mut chat), Status::Ok);
        drop(ct);
        mgm_model_free(m);
        let text = CString::new("give me the location of tumor ").unwrap();
        let mut a = null_mut();
        let p = greedy(20);
        assert_eq!(mgm_chat_ask(chat, Task::Refer as u32, text.as_ptr(), null(), &p, &mut a), Status::Ok);
        assert_eq!(take(a).0, golden_ids("p1_refer"));
        let q = CString::new("and its size?").unwrap();
        assert_eq!(mgm_chat_ask(chat, Task::Vqa as u32, q.as_ptr(), null(), &greedy(5), &mut a), Status::Ok);
        take(a);
        let (mut turns, mut len) = (0, 0);
        assert_eq!(mgm_chat_turns(chat, &mut turns), Status::Ok);
        assert_eq!(mgm_chat_context_len(chat, &mut len), Status::Ok);
        assert_eq!(turns, 2);
        assert!(len > 256);
        // An invalid question leaves the chat usable.
        expect(mgm_chat_ask(chat, Task::Vqa as u32, null(), null(), null(), &mut a), Status::InvalidOption, "needs");
        assert_eq!(mgm_chat_turns(chat, &mut turns), Status::Ok);
        assert_eq!(turns, 2);
        expect(mgm_chat_new(model(), null(), 7, &mut chat as *mut _), Status::InvalidArgument, "image is NULL");
        mgm_chat_free(chat);
    }
}

#[test]
fn one_model_serves_threads_at_once() {
    let model = model() as usize;
    let results: Vec<Vec<u32>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|_| {
                s.spawn(move || {
                    let img = open_image("synthetic_gradient.png");
                    let mut a = null_mut();
                    // SAFETY: the shared model is immutable and thread-safe.
                    let st = unsafe {
                        mgm_generate(
                            model as *const Model,
                            img.0,
                            Task::Report as u32,
                            null(),
                            null(),
                            &greedy(20),
                            &mut a,
                        )
                    };
                    assert_eq!(st, Status::Ok);
                    take(a).0
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for ids in results {
        assert_eq!(ids, golden_ids("p4_report"));
    }
}

unsafe extern "C" fn progress(fraction: f32, user_data: *mut c_void) -> bool {
    // SAFETY: user_data is the test's (Vec<f32>, cancel_after).
    let (seen, cancel_after) = unsafe { &mut *user_data.cast::<(Vec<f32>, usize)>() };
    seen.push(fraction);
    seen.len() < *cancel_after
}

#[test]
fn load_progress_reports_and_cancels() {
    let dir = cpath(fixtures());
    let mut state: (Vec<f32>, usize) = (Vec::new(), usize::MAX);
    let mut p = mgm_model_params_default();
    p.progress = Some(progress);
    p.progress_user_data = (&mut state as *mut (Vec<f32>, usize)).cast();
    let mut m = null_mut();
    // SAFETY: valid pointers; `state` outlives the calls.
    unsafe {
        assert_eq!(mgm_model_load_dir(dir.as_ptr(), &p, &mut m), Status::Ok, "{}", last_error());
        mgm_model_free(m);
        assert!(state.0.len() > 2);
        assert!(state.0.windows(2).all(|w| w[0] < w[1]), "{:?}", state.0);
        assert!(state.0.iter().all(|f| *f > 0.0 && *f <= 1.0));

        state = (Vec::new(), 2);
        p.progress_user_data = (&mut state as *mut (Vec<f32>, usize)).cast();
        expect(mgm_model_load_dir(dir.as_ptr(), &p, &mut m), Status::Cancelled, "cancelled");
        assert!(m.is_null());
        assert_eq!(state.0.len(), 2);
    }
}

#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_without_the_feature_is_unsupported() {
    let dir = cpath(fixtures());
    let p = ModelParams { device: Device::Cuda as u32, ..mgm_model_params_default() };
    let mut m = null_mut();
    // SAFETY: valid pointers.
    expect(unsafe { mgm_model_load_dir(dir.as_ptr(), &p, &mut m) }, Status::Unsupported, "cuda");
    assert!(m.is_null());
}

#[test]
fn draw_writes_a_png_of_the_input_and_dicom_opens() {
    let gradient = open_image("synthetic_gradient.png");
    let a = generate(&gradient, Task::Report, None, None, &greedy(2)).unwrap();
    let out = std::env::temp_dir().join(format!("mgm-capi-draw-{}.png", std::process::id()));
    let path = cpath(out.clone());
    // SAFETY: live handles and a valid path.
    assert_eq!(unsafe { mgm_answer_draw_png(a, gradient.0, path.as_ptr()) }, Status::Ok, "{}", last_error());
    let drawn = engine::Image::open(&out).unwrap();
    assert_eq!((drawn.width(), drawn.height()), (300, 200));
    // SAFETY: NULLs are reported, not dereferenced.
    expect(unsafe { mgm_answer_draw_png(a, null(), path.as_ptr()) }, Status::InvalidArgument, "image");
    let bad_dir = cpath(PathBuf::from("/nonexistent/dir/x.png"));
    // SAFETY: live handles.
    expect(unsafe { mgm_answer_draw_png(a, gradient.0, bad_dir.as_ptr()) }, Status::Io, "nonexistent");
    take(a);

    let dcm = cpath(fixtures().join("../dicom/CT_small.dcm"));
    let mut img = null_mut();
    // SAFETY: valid arguments.
    assert_eq!(unsafe { mgm_image_open(dcm.as_ptr(), &mut img) }, Status::Ok, "{}", last_error());
    let img = OwnedImage(img);
    let a = generate(&img, Task::Vqa, Some("what is shown?"), None, &greedy(3)).unwrap();
    assert_eq!(take(a).0.len(), 3);
}

#[test]
fn presets_and_sampling_defaults_are_the_engines() {
    let d = mgm_generate_params_default();
    assert_eq!((d.max_new_tokens, d.sampling, d.top_p, d.top_k, d.seed), (300, Sampling::Greedy as u32, 1.0, 0, 0));
    let mut p = d;
    // SAFETY: a writable params struct.
    assert_eq!(unsafe { mgm_generate_params_preset(Preset::Demo as u32, &mut p) }, Status::Ok);
    assert_eq!(
        (p.max_new_tokens, p.sampling, p.temperature, p.top_p, p.top_k, p.repetition_penalty, p.context_limit),
        (500, Sampling::Sample as u32, 0.6, 0.9, 50, 1.05, 2000)
    );
    // SAFETY: as above.
    expect(unsafe { mgm_generate_params_preset(7, &mut p) }, Status::InvalidArgument, "preset 7");
    // MGM_SAMPLING_SAMPLE with a temperature alone is the engine's lone temperature.
    let lone = GenerateParams { sampling: Sampling::Sample as u32, temperature: 0.7, ..d };
    // SAFETY: no stop strings.
    let opts = unsafe { lone.to_engine() }.unwrap();
    let want = engine::DecodeSettings { temperature: Some(0.7), ..Default::default() }.resolve().unwrap();
    assert_eq!(opts, want);
    // Temperature 0 with sampling is greedy, as `temperature=0` in Python.
    let zero = GenerateParams { sampling: Sampling::Sample as u32, temperature: 0.0, ..d };
    // SAFETY: no stop strings.
    assert_eq!(unsafe { zero.to_engine() }.unwrap().sampling, engine::Sampling::Greedy);
}

#[test]
fn stop_reason_names_are_the_engines() {
    // SAFETY: the function returns a static NUL-terminated string.
    let name = |r: u32| unsafe { CStr::from_ptr(mgm_stop_reason_name(r)) }.to_str().unwrap().to_owned();
    let all: Vec<String> = StopReason::ALL.iter().map(|&r| name(r as u32)).collect();
    assert_eq!(all, ["eos", "max_tokens", "stop_string", "cancelled", "context_full"]);
    assert_eq!(name(99), "unknown");
}

/// What the holding callback below shares with the test: it reports its first call, then waits
/// to be released.
struct Gate {
    entered: std::sync::Mutex<std::sync::mpsc::Sender<()>>,
    release: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
    held: std::sync::atomic::AtomicBool,
}

unsafe extern "C" fn hold(_: *const c_char, _: usize, user_data: *mut c_void) -> bool {
    // SAFETY: `user_data` is the test's `Gate`, which outlives the call.
    let gate = unsafe { &*(user_data as *const Gate) };
    if !gate.held.swap(true, std::sync::atomic::Ordering::SeqCst) {
        let _ = gate.entered.lock().unwrap().send(());
        let _ = gate.release.lock().unwrap().recv_timeout(std::time::Duration::from_secs(60));
    }
    true
}

#[test]
fn a_chat_asked_from_two_threads_at_once_is_busy_not_undefined() {
    let image = open_image("ct_nlst.png");
    let mut chat = null_mut();
    // SAFETY: live handles and a writable out-pointer.
    assert_eq!(unsafe { mgm_chat_new(model(), image.0, 0, &mut chat) }, Status::Ok);
    let (entered_tx, entered_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel();
    let gate = Gate {
        entered: std::sync::Mutex::new(entered_tx),
        release: std::sync::Mutex::new(release_rx),
        held: std::sync::atomic::AtomicBool::new(false),
    };
    let (chat_addr, gate_addr) = (chat as usize, &gate as *const Gate as usize);
    let asking = std::thread::spawn(move || {
        let mut p = greedy(20);
        p.on_text = Some(hold);
        p.on_text_user_data = gate_addr as *mut c_void;
        let text = CString::new("is it large?").unwrap();
        let mut a = null_mut();
        // SAFETY: the chat and the gate outlive this thread (joined below).
        let s = unsafe { mgm_chat_ask(chat_addr as *mut Chat, Task::Vqa as u32, text.as_ptr(), null(), &p, &mut a) };
        // SAFETY: an answer from the call (or NULL).
        unsafe { mgm_answer_free(a) };
        s
    });
    entered_rx.recv_timeout(std::time::Duration::from_secs(60)).expect("the first question streams text");
    let text = CString::new("and now?").unwrap();
    let (mut a, mut n) = (null_mut(), 0usize);
    // SAFETY: valid pointers; the chat is in use by the other thread, which is the point.
    unsafe {
        expect(
            mgm_chat_ask(chat, Task::Vqa as u32, text.as_ptr(), null(), &greedy(2), &mut a),
            Status::Busy,
            "another thread",
        );
        assert!(a.is_null());
        expect(mgm_chat_turns(chat, &mut n), Status::Busy, "another thread");
    }
    release_tx.send(()).unwrap();
    assert_eq!(asking.join().unwrap(), Status::Ok);
    // SAFETY: the chat is free again.
    unsafe {
        assert_eq!(mgm_chat_turns(chat, &mut n), Status::Ok);
        assert_eq!(n, 1, "the busy call changed nothing");
        mgm_chat_free(chat);
    }
}

/// Every committed input of the C ABI fuzz target (seed corpus and regressions) replayed: no
/// call may return `MGM_STATUS_PANIC` or crash (see `fuzz_harness`).
#[test]
fn fuzz_corpus_replays_without_panics() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut files = Vec::new();
    for dir in ["corpus/capi", "regressions/capi"] {
        if let Ok(entries) = std::fs::read_dir(root.join(dir)) {
            files.extend(entries.map(|e| e.unwrap().path()));
        }
    }
    files.sort();
    assert!(files.len() >= 3, "fuzz/corpus/capi must be committed ({} inputs)", files.len());
    for path in files {
        let data = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| super::fuzz_harness::run(&data));
        assert!(outcome.is_ok(), "{} failed", path.display());
    }
}

/// `mgm_model_load_file` on a converted file answers the reference's ids, as the original
/// files do; a file that is not a model file is a typed error.
#[test]
fn model_file_loads_and_matches_the_reference() {
    let dir = std::env::temp_dir().join(format!("mgm-capi-gguf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("tiny.gguf");
    let opts = engine::ConvertOptions::default();
    engine::convert(&engine::ModelFiles::from_dir(fixtures()), &opts, &file).unwrap();
    let path = cpath(file);
    let mut m = null_mut();
    // SAFETY: valid arguments.
    assert_eq!(unsafe { mgm_model_load_file(path.as_ptr(), null(), &mut m) }, Status::Ok, "{}", last_error());
    let ct = open_image("ct_nlst.png");
    let text = CString::new("give me the location of tumor ").unwrap();
    let params = greedy(20);
    let mut answer = null_mut();
    // SAFETY: live handles, NUL-terminated text, writable out-handle.
    let s = unsafe { mgm_generate(m, ct.0, Task::Refer as u32, text.as_ptr(), null(), &params, &mut answer) };
    assert_eq!(s, Status::Ok, "{}", last_error());
    assert_eq!(take(answer).0, golden_ids("p1_refer"));
    // SAFETY: made above, freed once.
    unsafe { mgm_model_free(m) };
    let not_a_model = cpath(fixtures().join("minigpt_med.pth"));
    let mut m = null_mut();
    // SAFETY: valid arguments.
    expect(unsafe { mgm_model_load_file(not_a_model.as_ptr(), null(), &mut m) }, Status::WeightsFormat, "GGUF");
    assert!(m.is_null());
    // SAFETY: NULL path.
    expect(unsafe { mgm_model_load_file(null(), null(), &mut m) }, Status::InvalidArgument, "path is NULL");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A study answers as `mgm_generate` does, for several tasks, from two threads at once.
#[test]
fn study_answers_equal_generate_from_two_threads() {
    let ct = open_image("ct_nlst.png");
    let mut study = null_mut();
    // SAFETY: live handles, writable out-handle.
    assert_eq!(unsafe { mgm_study_new(model(), ct.0, &mut study) }, Status::Ok, "{}", last_error());
    struct Shared(*mut Study);
    // SAFETY: a study may be asked from several threads at once (its contract).
    unsafe impl Sync for Shared {}
    let shared = Shared(study);
    let asks: [(Task, Option<&str>); 2] = [(Task::Refer, Some("give me the location of tumor ")), (Task::Report, None)];
    std::thread::scope(|s| {
        let handles: Vec<_> = asks
            .iter()
            .map(|&(task, text)| {
                let shared = &shared;
                s.spawn(move || {
                    let text = text.map(|t| CString::new(t).unwrap());
                    let params = greedy(20);
                    let mut answer = null_mut();
                    // SAFETY: a live study, NUL-terminated text or NULL, writable out-handle.
                    let st = unsafe {
                        mgm_study_ask(
                            shared.0,
                            task as u32,
                            text.as_ref().map_or(null(), |t| t.as_ptr()),
                            null(),
                            &params,
                            &mut answer,
                        )
                    };
                    assert_eq!(st, Status::Ok, "{}", last_error());
                    take(answer).0
                })
            })
            .collect();
        let got: Vec<Vec<u32>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(got[0], golden_ids("p1_refer"));
        let want = take(generate(&ct, Task::Report, None, None, &greedy(20)).unwrap()).0;
        assert_eq!(got[1], want);
    });
    // SAFETY: made above, freed once; NULL is ignored.
    unsafe {
        mgm_study_free(study);
        mgm_study_free(null_mut());
    }
    let mut none = null_mut();
    // SAFETY: NULL handles are errors.
    expect(unsafe { mgm_study_new(model(), null(), &mut none) }, Status::InvalidArgument, "image is NULL");
}

/// `mgm_generate_batch` answers each item as `mgm_generate` (or `mgm_study_ask`) does; an
/// item that fails has its own status and message and the others are answered.
#[test]
fn batch_items_answer_as_generate_and_fail_alone() {
    let (ct, cxr) = (open_image("ct_nlst.png"), open_image("cxr_rsna.jpg"));
    let mut study = null_mut();
    // SAFETY: live handles, writable out-handle.
    assert_eq!(unsafe { mgm_study_new(model(), cxr.0, &mut study) }, Status::Ok, "{}", last_error());
    let refer = CString::new("give me the location of tumor ").unwrap();
    let vqa = CString::new("Is it normal?").unwrap();
    let item = |image: *const Image, study: *const Study, task: Task, text: Option<&CString>| BatchItem {
        image,
        study,
        task: task as u32,
        text: text.map_or(null(), |t| t.as_ptr()),
        region: null(),
    };
    let items = [
        item(ct.0, null(), Task::Refer, Some(&refer)),
        item(ct.0, null(), Task::Vqa, None),
        item(null(), study, Task::Vqa, Some(&vqa)),
        item(null(), null(), Task::Report, None),
        item(cxr.0, null(), Task::Report, None),
        item(ct.0, study, Task::Report, None),
    ];
    let params = greedy(20);
    let empty = BatchResult { status: Status::Panic, answer: null_mut(), message: [0; MGM_BATCH_MESSAGE_BYTES] };
    let mut results = [empty; 6];
    for batch_size in [0, 2] {
        // SAFETY: six readable items with live handles; six writable results.
        let s = unsafe { mgm_generate_batch(model(), items.as_ptr(), 6, batch_size, &params, results.as_mut_ptr()) };
        assert_eq!(s, Status::Ok, "{}", last_error());
        let message = |r: &BatchResult| {
            // SAFETY: the library wrote a NUL-terminated message.
            unsafe { std::ffi::CStr::from_ptr(r.message.as_ptr()) }.to_str().unwrap().to_owned()
        };
        assert_eq!(results[0].status, Status::Ok, "{}", message(&results[0]));
        assert_eq!(take(results[0].answer).0, golden_ids("p1_refer"));
        assert_eq!((results[1].status, results[1].answer), (Status::InvalidOption, null_mut()));
        assert!(message(&results[1]).contains("needs a question"), "{}", message(&results[1]));
        let mut asked = null_mut();
        // SAFETY: a live study, NUL-terminated text, writable out-handle.
        let st = unsafe { mgm_study_ask(study, Task::Vqa as u32, vqa.as_ptr(), null(), &params, &mut asked) };
        assert_eq!(st, Status::Ok);
        assert_eq!(take(results[2].answer), take(asked));
        for k in [3, 5] {
            assert_eq!(results[k].status, Status::InvalidArgument);
            assert!(message(&results[k]).contains("exactly one of image and study"), "{}", message(&results[k]));
        }
        assert_eq!(take(results[4].answer).0, take(generate(&cxr, Task::Report, None, None, &params).unwrap()).0);
    }
    // SAFETY: nothing to answer: no pointer is read.
    assert_eq!(unsafe { mgm_generate_batch(model(), null(), 0, 0, null(), null_mut()) }, Status::Ok);
    // SAFETY: NULL items with n_items > 0 are an error, nothing is written.
    let s = unsafe { mgm_generate_batch(model(), null(), 2, 0, null(), results.as_mut_ptr()) };
    expect(s, Status::InvalidArgument, "must not be NULL");
    // SAFETY: made above, freed once.
    unsafe { mgm_study_free(study) };
}
