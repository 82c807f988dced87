//! The C ABI fuzz harness (`fuzz/fuzz_targets/capi.rs`, and the corpus replay in the unit
//! tests): the input is read as a short program of ABI calls with arbitrary handles (live or
//! NULL), enum values, numbers, strings (invalid UTF-8 included) and parameter structs, made
//! as C would make them. Every call must return a status; `MGM_STATUS_PANIC` is a finding, as
//! is anything that crashes. The harness keeps the ABI's pointer contracts itself (buffers as
//! long as it says, handles live until freed), so whatever goes wrong is the library's.

use std::ffi::{c_char, CString};
use std::ptr::{null, null_mut};
use std::sync::OnceLock;

use super::*;

/// Calls one input may make: enough for a few generations and everything around them.
const MAX_CALLS: usize = 24;
/// Generations one input may start (each runs the tiny model's ViT and decoder).
const MAX_GENERATIONS: usize = 3;

struct ModelHandle(*mut Model);
// SAFETY: a model handle may be used from any thread (the ABI's contract); it is never freed.
unsafe impl Send for ModelHandle {}
// SAFETY: as above; every model function takes `*const Model` and is thread-safe.
unsafe impl Sync for ModelHandle {}

/// The bundled tiny model, loaded once per process.
fn model() -> *mut Model {
    static MODEL: OnceLock<ModelHandle> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/tiny\0");
            let mut m = null_mut();
            // SAFETY: a NUL-terminated path, NULL params (the defaults), a writable out pointer.
            let status = unsafe { mgm_model_load_dir(dir.as_ptr().cast(), null(), &mut m) };
            assert_eq!(status, Status::Ok, "the fuzz harness needs the tiny model in tests/fixtures/tiny");
            ModelHandle(m)
        })
        .0
}

/// Bytes of the input, read front to back; an exhausted input reads as zeros.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn u8(&mut self) -> u8 {
        let (&b, rest) = self.0.split_first().unwrap_or((&0, &[]));
        self.0 = rest;
        b
    }
    fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | u64::from(self.u32()) << 32
    }
    fn f32(&mut self) -> f32 {
        f32::from_bits(self.u32())
    }
    fn f64(&mut self) -> f64 {
        f64::from_bits(self.u64())
    }
    fn bytes(&mut self, n: usize) -> &[u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }
    /// A C string of up to 63 bytes (any bytes but NUL, so invalid UTF-8 too).
    fn cstring(&mut self) -> CString {
        let n = usize::from(self.u8() % 64);
        let bytes: Vec<u8> = self.bytes(n).iter().map(|&b| if b == 0 { b' ' } else { b }).collect();
        CString::new(bytes).expect("NULs were replaced")
    }
    /// A value that is usually a valid enum value and sometimes any `u32`.
    fn enum_value(&mut self, valid: u32) -> u32 {
        match self.u8() {
            0..=223 => u32::from(self.u8()) % valid,
            224..=239 => valid + u32::from(self.u8()),
            _ => self.u32(),
        }
    }
}

/// Handles made so far; the input picks among them (or NULL) by index.
#[derive(Default)]
struct Handles {
    images: Vec<*mut Image>,
    answers: Vec<*mut Answer>,
    chats: Vec<*mut Chat>,
}

fn pick<T>(live: &[*mut T], input: &mut Input) -> *mut T {
    let i = usize::from(input.u8());
    if live.is_empty() || i == 255 {
        null_mut()
    } else {
        live[i % live.len()]
    }
}

#[track_caller]
fn check(status: Status) {
    assert_ne!(status, Status::Panic, "an ABI call panicked: {:?}", last_error_text());
}

fn last_error_text() -> String {
    // SAFETY: mgm_last_error never returns NULL; the string lives until the next call.
    unsafe { std::ffi::CStr::from_ptr(mgm_last_error()) }.to_string_lossy().into_owned()
}

/// Runs `data` as a program of ABI calls.
pub fn run(data: &[u8]) {
    let model = model();
    let mut input = Input(data);
    let mut h = Handles::default();
    let mut generations = 0;
    for _ in 0..MAX_CALLS {
        if input.0.is_empty() {
            break;
        }
        match input.u8() % 14 {
            0 => image_from_bytes(&mut input, &mut h),
            1 => image_from_pixels(&mut input, &mut h),
            2 => {
                let img = pick(&h.images, &mut input);
                let mode = input.enum_value(2);
                // SAFETY: `img` is NULL or live.
                check(unsafe { mgm_image_set_color_mode(img, mode) });
            }
            3 => {
                let img = pick(&h.images, &mut input);
                let (center, width) = (input.f64(), input.f64());
                // SAFETY: `img` is NULL or live.
                check(unsafe { mgm_image_set_window(img, center, width) });
            }
            4 => {
                let img = pick(&h.images, &mut input);
                let (mut w, mut ht) = (0u32, 0u32);
                let out_w: *mut u32 = if input.bool() { &mut w } else { null_mut() };
                // SAFETY: `img` is NULL or live; the outputs are NULL or writable.
                check(unsafe { mgm_image_size(img, out_w, &mut ht) });
            }
            5 | 6 if generations < MAX_GENERATIONS => {
                generations += 1;
                let chat = input.bool();
                ask(&mut input, &mut h, model, chat);
            }
            7 => {
                let img = pick(&h.images, &mut input);
                let history = input.enum_value(2);
                let mut chat = null_mut();
                let m = if input.u8() == 255 { null() } else { model.cast_const() };
                // SAFETY: handles NULL or live, `chat` writable.
                let status = unsafe { mgm_chat_new(m, img, history, &mut chat) };
                check(status);
                if status == Status::Ok {
                    h.chats.push(chat);
                }
            }
            8 => {
                let chat = pick(&h.chats, &mut input);
                let (mut turns, mut len) = (0usize, 0usize);
                // SAFETY: `chat` is NULL or live; the outputs are writable.
                check(unsafe { mgm_chat_turns(chat, &mut turns) });
                // SAFETY: as above.
                check(unsafe { mgm_chat_context_len(chat, &mut len) });
            }
            9 => read_answer(&mut input, &h),
            10 => {
                let answer = pick(&h.answers, &mut input);
                let img = pick(&h.images, &mut input);
                let path = std::env::temp_dir().join(format!("mgm-fuzz-{}.png", std::process::id()));
                let path = CString::new(path.to_string_lossy().into_owned()).expect("no NUL in a temp path");
                let p = if input.bool() { path.as_ptr() } else { null() };
                // SAFETY: handles NULL or live, `p` NULL or NUL-terminated.
                check(unsafe { mgm_answer_draw_png(answer, img, p) });
                let _ = std::fs::remove_file(path.to_string_lossy().as_ref());
            }
            11 => {
                let preset = input.enum_value(2);
                let mut params = mgm_generate_params_default();
                let out: *mut GenerateParams = if input.bool() { &mut params } else { null_mut() };
                // SAFETY: `out` is NULL or writable.
                check(unsafe { mgm_generate_params_preset(preset, out) });
                let _ = (mgm_status_name(input.u32()), mgm_stop_reason_name(input.u32()), last_error_text());
            }
            12 => {
                // Zero threads is always an error; a real size would fix the process's pool.
                assert_ne!(mgm_set_threads(0), Status::Ok);
                let _ = (mgm_abi_version(), mgm_version());
            }
            _ => free_one(&mut input, &mut h),
        }
    }
    // SAFETY: every handle is live and freed exactly once.
    unsafe {
        h.answers.iter().for_each(|&a| mgm_answer_free(a));
        h.chats.iter().for_each(|&c| mgm_chat_free(c));
        h.images.iter().for_each(|&i| mgm_image_free(i));
    }
}

fn image_from_bytes(input: &mut Input, h: &mut Handles) {
    let len = usize::from(input.u16() % 4096);
    let bytes = input.bytes(len).to_vec();
    let data = if input.u8() == 255 { null() } else { bytes.as_ptr() };
    let mut img = null_mut();
    // SAFETY: `data` is NULL or `bytes.len()` readable bytes; `img` is writable.
    let status = unsafe { mgm_image_from_bytes(data, bytes.len(), &mut img) };
    check(status);
    if status == Status::Ok {
        h.images.push(img);
    }
}

fn image_from_pixels(input: &mut Input, h: &mut Handles) {
    let (width, height) = (u32::from(input.u8() % 80), u32::from(input.u8() % 80));
    let stride = usize::from(input.u16() % 512);
    let format = input.enum_value(3);
    // As long as the contract asks for the widest format (3 bytes a pixel) and this stride.
    let row = (width as usize * 3).max(stride);
    let len = row * height as usize;
    let seed = input.u8();
    let buffer: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect();
    let pixels = if input.u8() == 255 { null() } else { buffer.as_ptr().cast() };
    let mut img = null_mut();
    // SAFETY: `pixels` is NULL or holds `stride * (height - 1) + width * bpp` bytes for any
    // format (the buffer is `max(stride, 3 * width) * height` long); `img` is writable.
    let status = unsafe { mgm_image_from_pixels(width, height, stride, format, pixels, &mut img) };
    check(status);
    if status == Status::Ok {
        h.images.push(img);
    }
}

/// One `mgm_generate` or `mgm_chat_ask` with arbitrary task, text, region and parameters.
fn ask(input: &mut Input, h: &mut Handles, model: *mut Model, chat: bool) {
    let task = input.enum_value(7);
    let text = input.cstring();
    let text_ptr: *const c_char = if input.u8() == 255 { null() } else { text.as_ptr() };
    let region = Region { kind: input.enum_value(2), coords: [0; 4].map(|_| f64::from(input.u8()) - 20.0) };
    let region_ptr: *const Region = if input.bool() { &region } else { null() };
    let stops: Vec<CString> = (0..input.u8() % 3).map(|_| input.cstring()).collect();
    let mut stop_ptrs: Vec<*const c_char> = stops.iter().map(|s| s.as_ptr()).collect();
    if !stop_ptrs.is_empty() && input.u8() == 255 {
        stop_ptrs[0] = null();
    }
    let mut params = mgm_generate_params_default();
    params.max_new_tokens = u32::from(input.u8() % 12);
    params.sampling = input.enum_value(2);
    if input.bool() {
        params.temperature = input.f32();
        params.top_p = input.f32();
        params.top_k = input.u32();
        params.seed = input.u64();
        params.repetition_penalty = input.f32();
        params.context_limit = input.u32() % 512;
    }
    params.stop_strings = if stop_ptrs.is_empty() { null() } else { stop_ptrs.as_ptr() };
    params.stop_strings_len = stop_ptrs.len();
    if input.u8() == 255 {
        params.struct_size = input.u32();
    }
    let params_ptr: *const GenerateParams = if input.u8() == 255 { null() } else { &params };
    let mut answer = null_mut();
    let status = if chat {
        let c = pick(&h.chats, input);
        // SAFETY: `c` is NULL or live; strings NUL-terminated; structs live for the call.
        unsafe { mgm_chat_ask(c, task, text_ptr, region_ptr, params_ptr, &mut answer) }
    } else {
        let img = pick(&h.images, input);
        // SAFETY: as above.
        unsafe { mgm_generate(model, img, task, text_ptr, region_ptr, params_ptr, &mut answer) }
    };
    check(status);
    if status == Status::Ok {
        h.answers.push(answer);
    }
}

fn read_answer(input: &mut Input, h: &Handles) {
    let a = pick(&h.answers, input);
    let (mut text, mut len) = (null(), 0usize);
    let (mut ids, mut n) = (null(), 0usize);
    let mut count = 0usize;
    let mut reason = StopReason::Eos;
    let mut timings = Timings { encode_ms: 0.0, prefill_ms: 0.0, decode_ms: 0.0, tokens_per_s: 0.0 };
    let mut b = BoundingBox { label: null(), label_len: 0, grid: [0; 4], pixels: [0.0; 4] };
    let index = usize::from(input.u8() % 8);
    // SAFETY: `a` is NULL or live; every output is writable.
    unsafe {
        check(mgm_answer_text(a, &mut text, &mut len));
        check(mgm_answer_token_ids(a, &mut ids, &mut n));
        check(mgm_answer_box_count(a, &mut count));
        check(mgm_answer_box(a, index, &mut b));
        check(mgm_answer_stop_reason(a, &mut reason));
        check(mgm_answer_timings(a, &mut timings));
    }
    if !text.is_null() {
        // SAFETY: the answer's text is `len` bytes and a NUL, alive while the answer is.
        let bytes = unsafe { std::slice::from_raw_parts(text.cast::<u8>(), len + 1) };
        assert_eq!(bytes[len], 0, "the answer text is NUL-terminated");
    }
}

fn free_one(input: &mut Input, h: &mut Handles) {
    let which = input.u8() % 3;
    let i = usize::from(input.u8());
    // SAFETY: the handle removed is live and freed once; NULL frees are no-ops.
    unsafe {
        match which {
            0 if !h.images.is_empty() => mgm_image_free(h.images.swap_remove(i % h.images.len())),
            1 if !h.answers.is_empty() => mgm_answer_free(h.answers.swap_remove(i % h.answers.len())),
            2 if !h.chats.is_empty() => mgm_chat_free(h.chats.swap_remove(i % h.chats.len())),
            _ => mgm_image_free(null_mut()),
        }
    }
}
