//! Root package: holds the whole-node integration tests in tests/.
