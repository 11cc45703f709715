//! Run status as a fold over the ticket and events.log.
