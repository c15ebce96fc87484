//! Dev-only helpers shared by the test suites: a caller with groups, a broker over a catalog and
//! the quickstart policies, and waiting for a condition to hold; [`gateway`] runs the whole
//! gateway against a throwaway cluster, for the gateway's tests and its bench.

pub mod gateway;

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use airlock_broker::broker::Settings;
use airlock_broker::bundle::PolicyBundle;
use airlock_broker::clock::Clock;
use airlock_broker::config::PolicySection;
use airlock_broker::secrets::load_or_create_key;
use airlock_broker::{Broker, Caller};
use airlock_core::policy::Principal;
use airlock_core::values::GrantDuration;
use airlock_postgres::cluster::LocalCluster;
use airlock_store::Store;

/// A person named `name` in `groups`, calling from 127.0.0.1.
pub fn caller(name: &str, groups: &[&str]) -> Caller {
    Caller {
        principal: Principal {
            name: name.parse().expect("a valid user name"),
            groups: groups.iter().map(|g| g.parse().expect("a valid group name")).collect(),
            service: false,
        },
        source_ip: [127, 0, 0, 1].into(),
    }
}

/// A broker in `dir` (store in `dir/data`) over `catalog` and the quickstart's policies:
/// `eng` may request demo-db's `read` and `write`, `sre` reviews, `oncall` reads at once.
pub async fn broker(dir: &Path, catalog: &str, clock: Arc<dyn Clock>) -> Broker {
    let quickstart = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/quickstart");
    std::fs::write(dir.join("catalog.toml"), catalog).expect("the catalog is written");
    let bundle = PolicyBundle::load(&PolicySection {
        catalog: dir.join("catalog.toml"),
        policies: format!("{quickstart}/policies").into(),
        tests: format!("{quickstart}/policy-tests").into(),
    })
    .expect("the catalog and the quickstart policies load");
    let store = Store::open(&dir.join("data")).await.expect("a store");
    let settings = Settings {
        pending_ttl: GrantDuration::parse("1h").expect("a duration"),
        auditors: vec!["sre".parse().expect("a group name")],
        breakglass: Default::default(),
        incidents: Default::default(),
    };
    let key = load_or_create_key(&dir.join("data")).expect("the broker's key");
    Broker::new(store, bundle, clock, settings, key)
}

/// The connector's password on a [`managed_database`].
pub const CONNECTOR_PASSWORD: &str = "connector-secret-3f9a";

/// Superuser SQL giving the connector what docs/postgres.md says it needs, and a table.
const PREPARE: &str = "
    CREATE ROLE airlock_connector LOGIN CREATEROLE PASSWORD 'connector-secret-3f9a';
    GRANT pg_read_all_data TO airlock_connector WITH ADMIN OPTION;
    CREATE ROLE app_writer NOLOGIN;
    CREATE TABLE orders (id int, note text);
    INSERT INTO orders VALUES (1, 'a'), (2, 'b'), (3, 'c');
    GRANT SELECT, INSERT ON orders TO app_writer;
    GRANT CREATE ON SCHEMA public TO app_writer;
    GRANT app_writer TO airlock_connector WITH ADMIN OPTION;
";

/// A throwaway cluster in `dir/pg`, prepared for a connector that is not a superuser, and the
/// catalog naming it as `demo-db` (`read` → `pg_read_all_data`; `write`, two approvals →
/// `app_writer`). The connector's password is in `dir/connector.password`.
pub async fn managed_database(dir: &Path) -> (LocalCluster, String) {
    let cluster = LocalCluster::start(&dir.join("pg")).await.expect("a throwaway cluster");
    let superuser = cluster.connect("postgres").await.expect("the superuser connects");
    superuser.batch_execute(PREPARE).await.expect("the target is prepared");
    std::fs::write(dir.join("connector.password"), format!("{CONNECTOR_PASSWORD}\n")).expect("a password file");
    let catalog = format!(
        r#"
        [[resource]]
        name = "demo-db"
        kind = "postgres"
        environment = "prod"
        [resource.postgres]
        address = "127.0.0.1:{port}"
        database = "postgres"
        admin_user = "airlock_connector"
        admin_password_file = "connector.password"
        [resource.roles.read]
        max_duration = "1h"
        database_roles = ["pg_read_all_data"]
        [resource.roles.write]
        max_duration = "30m"
        approvals = 2
        database_roles = ["app_writer"]
        "#,
        port = cluster.port()
    );
    (cluster, catalog)
}

/// Polls `check` until it holds, for at most 10 seconds.
pub async fn eventually<F, Fut>(mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    for _ in 0..200 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the condition did not hold within 10 seconds");
}
