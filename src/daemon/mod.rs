//! Wiring: the emulator, the store, watchers and workers, shutdown. (Skeleton.)
