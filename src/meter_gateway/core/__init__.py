"""Pure logic of the gateway: catalogue, codec, point table, quality, planning. No I/O library is imported here."""
