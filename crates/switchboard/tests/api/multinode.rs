//! Many nodes on one PostgreSQL database (filled in below).
