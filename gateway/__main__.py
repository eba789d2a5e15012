from gateway.cli import main

# Guarded: importing the package's entry point (a multiprocessing child does) must not run the CLI.
if __name__ == "__main__":
    raise SystemExit(main())
