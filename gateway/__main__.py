from gateway.cli import main

# Guarded: the OCR process is spawned and imports this module as __mp_main__.
if __name__ == "__main__":
    raise SystemExit(main())
