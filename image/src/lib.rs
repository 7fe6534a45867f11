//! cellos-image.
