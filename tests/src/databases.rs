//! Real databases for tests: a fresh SQLite file or a fresh PostgreSQL
//! database per test, so tests running in parallel never share rows.

use sqlx::Connection;

/// The PostgreSQL server tests use (`LUTHIEN_TEST_POSTGRES_URL`, default
/// the local `test` database with trust auth).
pub fn postgres_admin_url() -> String {
    std::env::var("LUTHIEN_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// The Redis tests use (`LUTHIEN_TEST_REDIS_URL`, default local).
pub fn redis_url() -> String {
    std::env::var("LUTHIEN_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A database that exists for one test and is removed afterwards.
pub struct TestDatabase {
    pub url: String,
    postgres_name: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDatabase {
    pub async fn sqlite() -> TestDatabase {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("luthien.db").display());
        TestDatabase {
            url,
            postgres_name: None,
            _dir: Some(dir),
        }
    }

    pub async fn postgres() -> TestDatabase {
        let admin = postgres_admin_url();
        let name = format!("luthien_e2e_{}", uuid::Uuid::new_v4().simple());
        let mut connection = sqlx::PgConnection::connect(&admin)
            .await
            .expect("PostgreSQL reachable (is it running? see README)");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut connection)
            .await
            .expect("create test database");
        let base = admin
            .rsplit_once('/')
            .map_or(admin.as_str(), |(base, _)| base);
        TestDatabase {
            url: format!("{base}/{name}"),
            postgres_name: Some(name),
            _dir: None,
        }
    }

    /// Both backends, for tests that must behave the same on each.
    pub async fn both() -> [TestDatabase; 2] {
        [TestDatabase::sqlite().await, TestDatabase::postgres().await]
    }

    pub fn backend(&self) -> &'static str {
        if self.postgres_name.is_some() {
            "postgres"
        } else {
            "sqlite"
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let Some(name) = self.postgres_name.take() else {
            return;
        };
        // Drop runs outside async; a short-lived thread with its own
        // runtime removes the database even when the test panicked.
        let admin = postgres_admin_url();
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                if let Ok(mut connection) = sqlx::PgConnection::connect(&admin).await {
                    let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    let _ = sqlx::query(sqlx::AssertSqlSafe(drop))
                        .execute(&mut connection)
                        .await;
                }
            });
        })
        .join();
    }
}
