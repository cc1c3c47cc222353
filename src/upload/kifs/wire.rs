//! KiFS wire records and their Avro binary / JSON codecs. (Skeleton.)
