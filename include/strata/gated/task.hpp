#pragma once
// A detection task from real text for gated models: a stream of sentences from a negative source
// (State of the Union addresses) with a small share from a positive source (Moby-Dick), split into
// train / calibration / test by position in each document.
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace strata::gated {

// Sentences of running text: line breaks and runs of white space become one space, and a sentence
// ends at '.', '!' or '?' (and any closing quotes or brackets) followed by white space and an
// upper-case letter, a quote or a bracket. Sentences of fewer than min_words or more than max_words
// words are left out; the rest keep their order.
std::vector<std::string> split_sentences(std::string_view text, int min_words, int max_words);

struct TaskSplit {
  std::vector<std::string> text;
  std::vector<uint8_t> label;      // 1: the positive source
  std::vector<int64_t> position;   // index of the sentence in its source's sentence list
};

struct SourceTaskOptions {
  std::filesystem::path negatives, positives;  // UTF-8 text files
  int64_t train = 1200, calibration = 800, test = 1000;  // sentences per split
  double positive_fraction = 0.1;              // share of positives in every split, (0, 0.1]
  // Each source's sentences are cut into runs of `block` consecutive sentences; a seeded shuffle gives
  // train_share of the runs to train, calibration_share to calibration, the rest to test. Splits are
  // disjoint by position and each one spans the whole document.
  int64_t block = 50;
  double train_share = 0.5, calibration_share = 0.25;
  int min_words = 6, max_words = 60;
  uint64_t seed = 1;
};

struct SourceTask {
  TaskSplit train, calibration, test;
  int64_t negative_sentences = 0, positive_sentences = 0;  // sentences found in each source
};

// Reads both files, splits them into sentences and draws each split's sentences (round(fraction *
// size) positives, the rest negatives) from its runs with a seeded generator, shuffled together.
// Throws strata::Error naming the option at fault ("positive_fraction", "train", "calibration",
// "test", "block", "train_share", "calibration_share", "min_words"/"max_words") or the file, and when
// a source has too few sentences in a split's runs.
SourceTask build_source_task(const SourceTaskOptions& options);

}  // namespace strata::gated
