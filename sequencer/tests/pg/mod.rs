//! A throwaway PostgreSQL database per test, dropped when the guard drops. A test file using
//! it also declares `mod services;` (what happens when the server is unreachable).

#![allow(dead_code)] // each test file uses a different part

use crate::services;

/// The server the tests use: `SEQUENCER_TEST_PG` or this machine's default.
pub fn admin_url() -> String {
    std::env::var("SEQUENCER_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A database created for one test.
pub struct TestDb {
    /// Its URL.
    pub url: String,
    name: String,
}

impl TestDb {
    /// Creates `seq_<tag>_<random>`. When the server is unreachable: panics in CI, otherwise
    /// prints why and returns `None` (the embedded store needs no PostgreSQL; the test then has
    /// nothing to do). See [`services::unavailable`].
    #[track_caller]
    pub fn create(tag: &str) -> Option<TestDb> {
        // The `postgres` crate runs its own runtime: keep it off any async test's threads.
        let tag = tag.to_string();
        match std::thread::spawn(move || Self::create_blocking(&tag)).join().expect("create test database") {
            Ok(db) => Some(db),
            Err(why) => {
                services::unavailable("PostgreSQL", &why);
                None
            }
        }
    }

    /// The database, or why the server is unreachable.
    fn create_blocking(tag: &str) -> Result<TestDb, String> {
        let admin = admin_url();
        let mut client = postgres::Client::connect(&admin, postgres::NoTls)
            .map_err(|e| format!("{admin} (SEQUENCER_TEST_PG) is unreachable: {e}"))?;
        let name = format!("seq_{tag}_{}", uuid::Uuid::new_v4().simple());
        client.batch_execute(&format!("CREATE DATABASE {name}")).expect("create test database");
        let config: postgres::Config = admin.parse().expect("admin url");
        let user = config.get_user().unwrap_or("postgres");
        let (host, port) = match config.get_hosts().first() {
            Some(postgres::config::Host::Tcp(h)) => (h.clone(), config.get_ports().first().copied().unwrap_or(5432)),
            _ => ("127.0.0.1".to_string(), 5432),
        };
        Ok(TestDb { url: format!("postgres://{user}@{host}:{port}/{name}"), name })
    }

    /// A plain client on the test database.
    pub fn client(&self) -> postgres::Client {
        postgres::Client::connect(&self.url, postgres::NoTls).expect("connect to test database")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Off the async test's threads, as in `create`; a failure is reported, not raised.
        if std::thread::spawn(move || drop_database(&name)).join().is_err() {
            eprintln!("could not drop test database {}", self.name);
        }
    }
}

fn drop_database(name: &str) {
    match postgres::Client::connect(&admin_url(), postgres::NoTls) {
        Ok(mut c) => {
            if let Err(e) = c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")) {
                eprintln!("could not drop test database {name}: {e}");
            }
        }
        Err(e) => eprintln!("could not drop test database {name}: {e}"),
    }
}
