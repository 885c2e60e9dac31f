// AMD matrix instructions (MFMA, WMMA) as wavefront-collective operations, driven only by AMD's
// register layouts: ARCH_INSTRUCTION_{A,B,D}.csv, each row one lane, each further column one
// register slot (`v3` a 32-bit register, `v1.[31:16]` its upper 16 bits, `v0.[15:8]` a byte),
// each cell the matrix element held there (`A[i][k]`, `B[k][j]`, `D[i][j]`; C is laid out as D).
//
// Files are looked up in the golden directory (set_layout_dir(), else $FA_EMU_LAYOUT_DIR, else the
// one tools/emu_build.py found: shared/amd_matrix_layouts in or beside the checkout) and then in
// csrc/emu/layouts (CDNA4, written from AMD's public sources: its README), for each architecture
// the target runs, newest first (target.h). Parsed at first use and cached.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "emulator.h"
#include "target.h"

namespace fa_emu {
namespace {

enum class Element { kFloat16, kBFloat16, kFloat8, kFloat32 };

// Where each lane's register slots sit in the matrix: at[lane * slots + slot] = (row, col).
struct Layout {
  int lanes = 0, slots = 0, bits = 0;  // element width
  std::vector<std::pair<int, int>> at;
};

struct Instruction {
  int m = 0, n = 0, k = 0;
  Element element = Element::kFloat16;
  Layout a, b, d;
};

std::string golden_dir_override;
std::map<std::string, std::unique_ptr<Instruction>> cache;

std::string golden_dir() {
  if (!golden_dir_override.empty()) return golden_dir_override;
  const char* env = std::getenv("FA_EMU_LAYOUT_DIR");
  if (env != nullptr && *env != '\0') return env;
  return FA_EMU_DEFAULT_LAYOUT_DIR;
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::stringstream stream(s);
  std::string item;
  while (std::getline(stream, item, sep)) out.push_back(item);
  return out;
}

// "v3" -> (3, 0, 32); "v1.[31:16]" -> (1, 16, 16): register, lowest bit, width.
bool parse_slot(const std::string& cell, int& reg, int& low, int& width) {
  int hi = 31, lo = 0;
  if (std::sscanf(cell.c_str(), "v%d.[%d:%d]", &reg, &hi, &lo) == 3 || std::sscanf(cell.c_str(), "v%d", &reg) == 1) {
    low = lo;
    width = hi - lo + 1;
    return width == 8 || width == 16 || width == 32;
  }
  return false;
}

bool parse_layout(const std::string& path, char matrix, int rows, int cols, Layout& layout, std::string& error) {
  std::ifstream file(path);
  if (!file) {
    error = "cannot read " + path;
    return false;
  }
  std::string line;
  std::getline(file, line);
  const std::vector<std::string> header = split(line, ',');
  if (header.size() < 2 || header[0] != "lane") {
    error = path + ": the header must be lane,<register slots>";
    return false;
  }
  std::vector<int> slot_of_column;
  for (size_t c = 1; c < header.size(); ++c) {
    int reg, low, width;
    if (!parse_slot(header[c], reg, low, width) || (layout.bits != 0 && width != layout.bits)) {
      error = path + ": bad register slot '" + header[c] + "'";
      return false;
    }
    layout.bits = width;
    slot_of_column.push_back(reg * (32 / width) + low / width);
  }
  layout.slots = static_cast<int>(slot_of_column.size());
  std::vector<int> seen(static_cast<size_t>(rows) * cols, 0);
  std::vector<std::vector<std::pair<int, int>>> lanes;
  while (std::getline(file, line)) {
    if (line.empty()) continue;
    const std::vector<std::string> cells = split(line, ',');
    if (cells.size() != header.size() || std::atoi(cells[0].c_str()) != static_cast<int>(lanes.size())) {
      error = path + ": bad row '" + line + "'";
      return false;
    }
    std::vector<std::pair<int, int>> lane(layout.slots, {-1, -1});
    for (size_t c = 1; c < cells.size(); ++c) {
      char name = 0;
      int i = -1, j = -1;
      if (std::sscanf(cells[c].c_str(), "%c[%d][%d]", &name, &i, &j) != 3 || name != matrix || i < 0 || j < 0 ||
          i >= rows || j >= cols) {
        error = path + ": bad cell '" + cells[c] + "'";
        return false;
      }
      lane[slot_of_column[c - 1]] = {i, j};
      seen[static_cast<size_t>(i) * cols + j] = 1;
    }
    lanes.push_back(lane);
  }
  for (int s : seen) {
    if (s == 0) {
      error = path + ": does not cover every element of the matrix";
      return false;
    }
  }
  layout.lanes = static_cast<int>(lanes.size());
  for (auto& lane : lanes) layout.at.insert(layout.at.end(), lane.begin(), lane.end());
  return true;
}

bool file_exists(const std::string& path) { return std::ifstream(path).good(); }

const Instruction* find_instruction(const std::string& name, std::string& error) {
  auto it = cache.find(name);
  if (it != cache.end()) return it->second.get();
  auto ins = std::make_unique<Instruction>();
  const size_t f32 = name.find("_f32_");
  const size_t shape = f32 == std::string::npos ? f32 : name.find_first_of("0123456789", f32 + 5);
  if (shape == std::string::npos || std::sscanf(name.c_str() + shape, "%dx%dx%d", &ins->m, &ins->n, &ins->k) != 3) {
    error = "unknown matrix instruction " + name;
    return nullptr;
  }
  if (name.find("bf16") != std::string::npos) ins->element = Element::kBFloat16;
  else if (name.find("f16") != std::string::npos) ins->element = Element::kFloat16;
  else if (name.find("fp8") != std::string::npos) ins->element = Element::kFloat8;
  else ins->element = Element::kFloat32;
  const std::vector<std::string> dirs = {golden_dir(), FA_EMU_OWN_LAYOUT_DIR};
  std::string looked;
  for (const std::string& arch : split(FA_EMU_LAYOUT_ARCHS, ',')) {
    for (const std::string& dir : dirs) {
      const std::string stem = dir + "/" + arch + "_" + name + "_";
      looked += " " + stem + "{A,B,D}.csv";
      if (!file_exists(stem + "A.csv")) continue;
      if (!parse_layout(stem + "A.csv", 'A', ins->m, ins->k, ins->a, error) ||
          !parse_layout(stem + "B.csv", 'B', ins->k, ins->n, ins->b, error) ||
          !parse_layout(stem + "D.csv", 'D', ins->m, ins->n, ins->d, error)) {
        return nullptr;
      }
      if (ins->d.bits != 32 || ins->a.bits != ins->b.bits) {
        error = stem + "*.csv: A and B must have one element width, D 32-bit floats";
        return nullptr;
      }
      if (ins->a.lanes != wave_size() || ins->b.lanes != wave_size() || ins->d.lanes != wave_size()) {
        error = stem + "*.csv: the layouts are not for a wavefront of " + std::to_string(wave_size()) + " lanes";
        return nullptr;
      }
      const Instruction* result = ins.get();
      cache[name] = std::move(ins);
      return result;
    }
  }
  error = name + " has no register layout for " + std::string(target_name()) + " (looked for" + looked + ")";
  return nullptr;
}

float fp8_to_float(uint8_t v) {
  const bool fnuz = std::strcmp(FA_EMU_FP8_FORMAT, "e4m3fnuz") == 0;
  const int sign = v >> 7, exponent = (v >> 3) & 15, mantissa = v & 7;
  if (fnuz ? v == 0x80 : (exponent == 15 && mantissa == 7)) return NAN;
  const int bias = fnuz ? 8 : 7;
  const float magnitude = exponent == 0 ? std::ldexp(static_cast<float>(mantissa) / 8.f, 1 - bias)
                                        : std::ldexp(1.f + static_cast<float>(mantissa) / 8.f, exponent - bias);
  return sign ? -magnitude : magnitude;
}

// Element `slot` of a lane's A or B registers as a float (exact: every input type fits).
float element(const void* registers, int slot, Element type) {
  const unsigned char* bytes = static_cast<const unsigned char*>(registers);
  switch (type) {
    case Element::kFloat16: {
      _Float16 h;
      std::memcpy(&h, bytes + 2 * slot, 2);
      return static_cast<float>(h);
    }
    case Element::kBFloat16: {
      uint16_t bits;
      std::memcpy(&bits, bytes + 2 * slot, 2);
      const uint32_t word = static_cast<uint32_t>(bits) << 16;
      float f;
      std::memcpy(&f, &word, 4);
      return f;
    }
    case Element::kFloat8: return fp8_to_float(bytes[slot]);
    case Element::kFloat32: {
      float f;
      std::memcpy(&f, bytes + 4 * slot, 4);
      return f;
    }
  }
  return NAN;
}

// Gathers a whole A or B matrix from the lanes; an element two lanes hold (RDNA3's duplicated
// rows) must agree.
bool gather(const Layout& layout, const void* const* lanes, Element type, int cols, std::vector<float>& out,
            const char* name, std::string& error) {
  std::vector<char> have(out.size(), 0);
  for (int l = 0; l < layout.lanes; ++l) {
    for (int s = 0; s < layout.slots; ++s) {
      const auto [i, j] = layout.at[static_cast<size_t>(l) * layout.slots + s];
      const float v = element(lanes[l], s, type);
      float& dst = out[static_cast<size_t>(i) * cols + j];
      if (have[static_cast<size_t>(i) * cols + j] && std::memcmp(&dst, &v, 4) != 0) {
        char buffer[200];
        std::snprintf(buffer, sizeof buffer, "%s[%d][%d] differs between the lanes that hold it (lane %d: %g, "
                      "another: %g)", name, i, j, l, v, dst);
        error = buffer;
        return false;
      }
      dst = v;
      have[static_cast<size_t>(i) * cols + j] = 1;
    }
  }
  return true;
}

}  // namespace

void set_layout_dir(const char* dir) {
  golden_dir_override = dir != nullptr ? dir : "";
  cache.clear();
}

void complete_matrix_op(const char* instruction, int lanes, const void* const* a, const void* const* b,
                        const float* const* c, float* const* d, std::string& error) {
  const Instruction* ins = find_instruction(instruction, error);
  if (ins == nullptr) return;
  if (lanes != ins->a.lanes) {
    error = std::string(instruction) + ": wrong number of lanes";
    return;
  }
  const int M = ins->m, N = ins->n, K = ins->k;
  std::vector<float> A(static_cast<size_t>(M) * K), B(static_cast<size_t>(K) * N), C(static_cast<size_t>(M) * N);
  if (!gather(ins->a, a, ins->element, K, A, "A", error) || !gather(ins->b, b, ins->element, N, B, "B", error)) {
    error = std::string(instruction) + ": " + error;
    return;
  }
  for (int l = 0; l < lanes; ++l) {
    for (int s = 0; s < ins->d.slots; ++s) {
      const auto [i, j] = ins->d.at[static_cast<size_t>(l) * ins->d.slots + s];
      C[static_cast<size_t>(i) * N + j] = c[l][s];
    }
  }
  // fp32 accumulation in k order; the products of 16- and 8-bit inputs are exact in fp32.
  std::vector<float> D(C);
  for (int i = 0; i < M; ++i) {
    for (int j = 0; j < N; ++j) {
      float acc = D[static_cast<size_t>(i) * N + j];
      for (int k = 0; k < K; ++k) acc += A[static_cast<size_t>(i) * K + k] * B[static_cast<size_t>(k) * N + j];
      D[static_cast<size_t>(i) * N + j] = acc;
    }
  }
  for (int l = 0; l < lanes; ++l) {
    for (int s = 0; s < ins->d.slots; ++s) {
      const auto [i, j] = ins->d.at[static_cast<size_t>(l) * ins->d.slots + s];
      d[l][s] = D[static_cast<size_t>(i) * N + j];
    }
  }
}

}  // namespace fa_emu
