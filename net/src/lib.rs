//! Wire protocol and client library (issue 4).
