"""bn-repro: reproduce and extend Batch Normalization (Ioffe & Szegedy, 2015)."""
