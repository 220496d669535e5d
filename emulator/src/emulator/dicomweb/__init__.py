"""DICOMweb (STOW-RS, QIDO-RS, WADO-RS) over the HealthImaging backend, on the emulator's one port."""
