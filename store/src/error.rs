//! The store's one error type, and the line between failures worth retrying
//! (the database is away or busy) and failures that retrying cannot fix (a
//! record the database refuses).

use sqlx::error::ErrorKind;

/// Everything that can go wrong opening, writing or reading the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database URL names a scheme the store does not speak. Only the
    /// scheme is quoted: the rest of a URL may hold a password.
    #[error(
        "unsupported event store URL scheme `{scheme}:`; use sqlite://PATH, sqlite::memory: or postgres://…"
    )]
    UnsupportedScheme { scheme: String },

    #[error("event store database: {0}")]
    Database(#[from] sqlx::Error),

    #[error("event store migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),

    /// A row written by a newer Luthien: refusing it beats misreading it.
    #[error(
        "{what} has schema version {found}, newer than the {known} this build reads; upgrade Luthien to read it"
    )]
    NewerSchema {
        what: String,
        found: i64,
        known: u32,
    },

    /// A list cursor that this store did not hand out (or that was mangled).
    #[error("invalid page cursor")]
    InvalidCursor,

    /// A stored row that does not decode into the shared event schema.
    #[error("stored {what} is unreadable: {detail}")]
    Corrupt { what: String, detail: String },

    /// A record that cannot be turned into column values.
    #[error("cannot store {what}: {detail}")]
    Encode { what: String, detail: String },
}

impl StoreError {
    /// True when the same write may succeed later (connection lost, pool
    /// timeout, database locked or not accepting connections, a table not
    /// migrated yet). False when the database refused the data itself: such
    /// a batch is split so that one bad record cannot block the others.
    ///
    /// Unknown errors count as transient: retrying (while the bounded queue
    /// drops and counts overflow) loses less than discarding a batch.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Database(error) => is_transient_sqlx(error),
            StoreError::Migrate(_) => true,
            StoreError::UnsupportedScheme { .. }
            | StoreError::NewerSchema { .. }
            | StoreError::InvalidCursor
            | StoreError::Corrupt { .. }
            | StoreError::Encode { .. } => false,
        }
    }
}

fn is_transient_sqlx(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => {
            if matches!(
                db.kind(),
                ErrorKind::UniqueViolation
                    | ErrorKind::ForeignKeyViolation
                    | ErrorKind::NotNullViolation
                    | ErrorKind::CheckViolation
            ) {
                return false;
            }
            let code = db.code().unwrap_or_default();
            if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                // Extended result code; the primary code is its low byte.
                let primary = code.parse::<i32>().unwrap_or(0) & 0xff;
                // TOOBIG, CONSTRAINT, MISMATCH, RANGE: the record, not the
                // database, is the problem.
                !matches!(primary, 18 | 19 | 20 | 25)
            } else {
                // PostgreSQL SQLSTATE classes 22 (data exception, e.g. a
                // `\u0000` in jsonb), 23 (integrity constraint) and 54
                // (program limit exceeded, e.g. a row too large).
                !(code.starts_with("22") || code.starts_with("23") || code.starts_with("54"))
            }
        }
        sqlx::Error::Encode(_)
        | sqlx::Error::TypeNotFound { .. }
        | sqlx::Error::InvalidArgument(_) => false,
        _ => true,
    }
}
