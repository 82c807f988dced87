// minigpt_med_example: answers a question about an image with libminigpt_med from C++17.
//
//   minigpt_med_example MODEL_DIR IMAGE [--task NAME] [--text TEXT] [--grid X1,Y1,X2,Y2]
//                       [--max-new-tokens N] [--expect-ids ID,ID,...] [--follow-up QUESTION]
//
// MODEL_DIR is laid out like tests/fixtures/tiny (llama-2-7b-chat-hf/, eva_vit_g.pth,
// minigpt_med.pth, minigpt_med.json). Prints the streamed text, the answer, its token ids and
// boxes. With --expect-ids it exits with status 1 unless the greedy token ids are exactly
// those (CI compares them with the Rust engine's reference ids). --follow-up asks a second
// question in a chat about the same image.
//
// The C handles are held by std::unique_ptr with the library's free functions as deleters,
// so every handle is released on every path, exceptions included.

#include <minigpt_med.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <memory>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace mgm {

// A failed library call, carrying its status and message.
class Error : public std::runtime_error {
 public:
  Error(mgm_Status status, const std::string& what)
      : std::runtime_error(what + ": " + mgm_status_name(status) + ": " + mgm_last_error()), status_(status) {}
  mgm_Status status() const { return status_; }

 private:
  mgm_Status status_;
};

// Throws unless the call succeeded; the message is read at once, before any other call can
// replace the thread's last error.
inline void check(mgm_Status status, const char* what) {
  if (status != MGM_STATUS_OK) throw Error(status, what);
}

// unique_ptr deleter calling one of the library's free functions (all accept NULL).
template <auto Free>
struct Deleter {
  template <typename T>
  void operator()(T* p) const noexcept { Free(p); }
};

using Model = std::unique_ptr<mgm_Model, Deleter<mgm_model_free>>;
using Image = std::unique_ptr<mgm_Image, Deleter<mgm_image_free>>;
using Answer = std::unique_ptr<mgm_Answer, Deleter<mgm_answer_free>>;
using Chat = std::unique_ptr<mgm_Chat, Deleter<mgm_chat_free>>;

inline Model load_dir(const std::string& dir, const mgm_ModelParams& params) {
  mgm_Model* raw = nullptr;
  check(mgm_model_load_dir(dir.c_str(), &params, &raw), "loading the model");
  return Model(raw);
}

inline Image open_image(const std::string& path) {
  mgm_Image* raw = nullptr;
  check(mgm_image_open(path.c_str(), &raw), "opening the image");
  return Image(raw);
}

inline Answer generate(const Model& model, const Image& image, mgm_Task task, const char* text,
                       const mgm_Region* region, const mgm_GenerateParams& params) {
  mgm_Answer* raw = nullptr;
  check(mgm_generate(model.get(), image.get(), task, text, region, &params, &raw), "generating");
  return Answer(raw);
}

inline Chat new_chat(const Model& model, const Image& image) {
  mgm_Chat* raw = nullptr;
  check(mgm_chat_new(model.get(), image.get(), MGM_CHAT_HISTORY_KEEP_ANSWERS, &raw), "starting a chat");
  return Chat(raw);
}

inline Answer ask(const Chat& chat, mgm_Task task, const char* text, const mgm_GenerateParams& params) {
  mgm_Answer* raw = nullptr;
  check(mgm_chat_ask(chat.get(), task, text, nullptr, &params, &raw), "asking");
  return Answer(raw);
}

inline std::string text(const Answer& answer) {
  const char* p = nullptr;
  size_t len = 0;
  check(mgm_answer_text(answer.get(), &p, &len), "reading the text");
  return std::string(p, len);
}

inline std::vector<uint32_t> token_ids(const Answer& answer) {
  const uint32_t* ids = nullptr;
  size_t len = 0;
  check(mgm_answer_token_ids(answer.get(), &ids, &len), "reading the token ids");
  return std::vector<uint32_t>(ids, ids + len);
}

inline std::vector<mgm_BoundingBox> boxes(const Answer& answer) {
  size_t n = 0;
  check(mgm_answer_box_count(answer.get(), &n), "counting boxes");
  std::vector<mgm_BoundingBox> out(n);
  for (size_t i = 0; i < n; ++i) check(mgm_answer_box(answer.get(), i, &out[i]), "reading a box");
  return out;
}

}  // namespace mgm

namespace {

std::optional<mgm_Task> task_of(const std::string& name) {
  static const std::pair<const char*, mgm_Task> names[] = {
      {"report", MGM_TASK_REPORT},       {"vqa", MGM_TASK_VQA},           {"detection", MGM_TASK_DETECTION},
      {"refer", MGM_TASK_REFER},         {"grounding", MGM_TASK_GROUNDING}, {"identify", MGM_TASK_IDENTIFY},
      {"custom", MGM_TASK_CUSTOM},
  };
  for (const auto& [n, t] : names)
    if (name == n) return t;
  return std::nullopt;
}

std::vector<double> numbers(const std::string& list) {
  std::vector<double> out;
  std::stringstream ss(list);
  for (std::string item; std::getline(ss, item, ',');) out.push_back(std::stod(item));
  return out;
}

std::string join(const std::vector<uint32_t>& ids) {
  std::string s;
  for (size_t i = 0; i < ids.size(); ++i) s += (i ? "," : "") + std::to_string(ids[i]);
  return s;
}

// Streaming callback: a capture-free lambda converts to the C function pointer; user_data is
// the std::string collecting the pieces. It must not throw into the library.
bool on_text(const char* piece, size_t len, void* user_data) noexcept {
  static_cast<std::string*>(user_data)->append(piece, len);
  std::fwrite(piece, 1, len, stdout);
  std::fflush(stdout);
  return true;
}

bool on_progress(float fraction, void* /*user_data*/) noexcept {
  std::fprintf(stderr, "\rloading %3.0f%%", fraction * 100.0f);
  if (fraction >= 1.0f) std::fprintf(stderr, "\n");
  return true;
}

const char* stop_reason_name(mgm_StopReason r) { return mgm_stop_reason_name(static_cast<uint32_t>(r)); }

int run(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: " << argv[0]
              << " MODEL_DIR IMAGE [--task NAME] [--text TEXT] [--grid X1,Y1,X2,Y2] [--max-new-tokens N]"
                 " [--expect-ids ID,...] [--follow-up QUESTION]\n";
    return 2;
  }
  std::string model_dir = argv[1], image_path = argv[2], task_name = "report";
  std::optional<std::string> prompt, expect, follow_up;
  std::optional<mgm_Region> region;
  uint32_t max_new_tokens = 20;
  for (int i = 3; i + 1 < argc; i += 2) {
    std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--task") task_name = value;
    else if (flag == "--text") prompt = value;
    else if (flag == "--max-new-tokens") max_new_tokens = static_cast<uint32_t>(std::stoul(value));
    else if (flag == "--expect-ids") expect = value;
    else if (flag == "--follow-up") follow_up = value;
    else if (flag == "--grid") {
      auto v = numbers(value);
      if (v.size() != 4) throw std::invalid_argument("--grid needs 4 numbers");
      region = mgm_Region{MGM_REGION_KIND_GRID, {v[0], v[1], v[2], v[3]}};
    } else throw std::invalid_argument("unknown flag " + flag);
  }
  auto task = task_of(task_name);
  if (!task) throw std::invalid_argument("unknown task " + task_name);

  // A header/library mismatch would make every struct and enum suspect: stop early.
  if (mgm_abi_version() != MGM_ABI_VERSION) {
    std::cerr << "libminigpt_med ABI " << mgm_abi_version() << " does not match the header's " << MGM_ABI_VERSION << "\n";
    return 1;
  }
  std::cout << "libminigpt_med " << mgm_version() << " (header " << MGM_VERSION_MAJOR << "." << MGM_VERSION_MINOR
            << "." << MGM_VERSION_PATCH << ", ABI " << mgm_abi_version() << ")\n";

  mgm_ModelParams load = mgm_model_params_default();
  load.progress = on_progress;
  mgm::Model model = mgm::load_dir(model_dir, load);
  mgm::Image image = mgm::open_image(image_path);
  uint32_t width = 0, height = 0;
  mgm::check(mgm_image_size(image.get(), &width, &height), "reading the image size");
  std::cout << "image " << image_path << ": " << width << "x" << height << "\n";

  // Errors come back as status codes with a message, never as crashes.
  mgm_Image* missing = nullptr;
  mgm_Status s = mgm_image_open("/nonexistent.png", &missing);
  std::cout << "expected error: " << mgm_status_name(s) << ": " << mgm_last_error() << "\n";

  mgm_GenerateParams params = mgm_generate_params_default();
  params.max_new_tokens = max_new_tokens;
  std::string streamed;
  params.on_text = on_text;
  params.on_text_user_data = &streamed;
  std::cout << "streamed: ";
  mgm::Answer answer =
      mgm::generate(model, image, *task, prompt ? prompt->c_str() : nullptr, region ? &*region : nullptr, params);
  std::cout << "\n";

  mgm_StopReason reason;
  mgm::check(mgm_answer_stop_reason(answer.get(), &reason), "reading the stop reason");
  mgm_Timings t;
  mgm::check(mgm_answer_timings(answer.get(), &t), "reading timings");
  std::string answer_text = mgm::text(answer);
  std::vector<uint32_t> ids = mgm::token_ids(answer);
  std::cout << "answer: " << answer_text << "\n";
  std::cout << "stop reason: " << stop_reason_name(reason) << "; " << t.tokens_per_s << " tokens/s\n";
  std::cout << "token_ids: [" << join(ids) << "]\n";
  for (const mgm_BoundingBox& b : mgm::boxes(answer)) {
    std::cout << "box " << (b.label ? std::string(b.label, b.label_len) : std::string("(no label)")) << " grid "
              << b.grid[0] << "," << b.grid[1] << "," << b.grid[2] << "," << b.grid[3] << " px " << b.pixels[0]
              << "," << b.pixels[1] << "," << b.pixels[2] << "," << b.pixels[3] << "\n";
  }

  int status = 0;
  if (streamed != answer_text) {
    std::cerr << "FAIL: the streamed pieces do not make up the answer text\n";
    status = 1;
  }
  if (expect) {
    if (join(ids) == *expect) {
      std::cout << "token ids match the expected ids\n";
    } else {
      std::cerr << "FAIL: token ids differ\n  expected [" << *expect << "]\n  got      [" << join(ids) << "]\n";
      status = 1;
    }
  }

  if (follow_up) {
    // A chat: the image is encoded once; the follow-up costs only its own tokens.
    mgm::Chat chat = mgm::new_chat(model, image);
    params.on_text = nullptr;
    mgm::Answer first =
        mgm::ask(chat, *task, prompt ? prompt->c_str() : nullptr, params);  // region-less tasks only
    mgm::Answer second = mgm::ask(chat, MGM_TASK_VQA, follow_up->c_str(), params);
    size_t turns = 0;
    mgm::check(mgm_chat_turns(chat.get(), &turns), "reading chat turns");
    std::cout << "chat turn 1 ids: [" << join(mgm::token_ids(first)) << "]\n";
    std::cout << "chat turn 2 (" << *follow_up << "): " << mgm::text(second) << " (" << turns << " turns)\n";
    if (!region && mgm::token_ids(first) != ids) {
      std::cerr << "FAIL: the chat's first answer differs from mgm_generate's\n";
      status = 1;
    }
  }
  return status;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}
