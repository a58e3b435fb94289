// strata: the command-line tool. Subcommands live in their own files (see commands.hpp).
#include <cstdio>
#include <exception>

#include <CLI/CLI.hpp>

#include "commands.hpp"
#include "strata/core/blas.hpp"
#include "strata/core/error.hpp"
#include "strata/version.hpp"

int main(int argc, char** argv) {
  strata::ensure_fast_blas(argc, argv);

  CLI::App app{"strata: layer-wise compression of neural networks (GGUF, safetensors, llama2.c)"};
  app.set_version_flag("--version", std::string("strata ") + STRATA_VERSION_STRING);
  app.require_subcommand(1);

  strata::cli::register_info(app);
  strata::cli::register_inspect(app);
  strata::cli::register_engine(app);
  strata::cli::register_sweep(app);
  strata::cli::register_compress(app);
  strata::cli::register_kv(app);
  strata::cli::register_rotate(app);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const strata::Error& e) {
    std::fprintf(stderr, "strata: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "strata: unexpected error: %s\n", e.what());
    return 2;
  }
  return 0;
}
