//! Holds nothing: the cross-process tests are in `all/`.
