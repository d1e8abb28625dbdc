//! Sets of byte ranges: CBT changed blocks, differing extents.
