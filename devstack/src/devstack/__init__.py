"""The local tooling (distribution ``himig-devstack``): the embedded local stack and the demo.

`stack` supervises the Temporal dev server, moto, the emulator and a worker as child processes on 127.0.0.1;
`cli` offers them as ``himig stack`` and ``himig demo``; `demo` migrates the bundled sample corpus end to end.
Installed by ``make demo`` / ``make test``, never in a production image.

May import: anything of the service, the `corpus` package beside it and the emulator (by running it).
"""
