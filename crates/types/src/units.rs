//! Human units: byte sizes and rates.
