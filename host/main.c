/*
 * main.c - the lunaroom command line: picks the subcommand and the options
 * every subcommand takes (--lua-path, --lua-modules, --help).
 *
 * Owns: main(), the dispatch to the drivers (serve.c: serve; cli.c: test,
 * lua, check, init, version) and the exit status they return.
 * Must not: contain a driver, engine or transport logic.
 */
#include <stdio.h>
#include <string.h>

#include "cli.h"

int main(int argc, char **argv) {
  const char *lua_dir = lr_cli_default_lua_dir();
  if (argc >= 2 && (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "version") == 0))
    return lr_cmd_version();
  if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
    fputs(lr_cli_usage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  /* --lua-path anywhere after the command; --lua-modules too, except for
   * serve, which reads it with its other options (it may come from
   * --config). */
  for (int i = 2; i + 1 < argc; i++) {
    if (strcmp(argv[i], "--lua-path") == 0) {
      lua_dir = argv[i + 1];
      memmove(&argv[i], &argv[i + 2], (size_t)(argc - i - 2) * sizeof *argv);
      argc -= 2;
      break;
    }
  }
  for (int i = 2; i + 1 < argc && strcmp(argv[1], "serve") != 0; i++) {
    if (strcmp(argv[i], "--lua-modules") == 0) {
      lr_cli_lua_modules = argv[i + 1];
      memmove(&argv[i], &argv[i + 2], (size_t)(argc - i - 2) * sizeof *argv);
      argc -= 2;
      break;
    }
  }
  for (int i = 2; i < argc; i++) {
    if (strcmp(argv[i], "--help") == 0) {
      fputs(lr_cli_usage, stdout);
      return 0;
    }
  }
  if (strcmp(argv[1], "serve") == 0) return lr_cmd_serve(argc - 2, argv + 2, lua_dir);
  if (strcmp(argv[1], "test") == 0) return lr_cmd_test(argc - 2, argv + 2, lua_dir);
  if (strcmp(argv[1], "lua") == 0) return lr_cmd_lua(argc - 2, argv + 2, lua_dir);
  if (strcmp(argv[1], "check") == 0) return lr_cmd_check(argc > 2 ? argv[2] : "rooms", lua_dir);
  if (strcmp(argv[1], "init") == 0) return lr_cmd_init(argc - 2, argv + 2, lua_dir);
  fprintf(stderr, "lunaroom: unknown command %s\n\n%s", argv[1], lr_cli_usage);
  return 2;
}
