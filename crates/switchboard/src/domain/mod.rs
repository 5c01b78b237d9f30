//! Domain types: raw input becomes these at the edge, inner code never re-checks.

pub mod call;
pub mod email;
pub mod ids;
pub mod message;
pub mod phone;
pub mod time;

pub use email::{EmailDetails, EmailFile};
pub use message::{ContactIdentity, Fact, NewMessage, OtherIdentity};
pub use phone::PhoneNumber;
