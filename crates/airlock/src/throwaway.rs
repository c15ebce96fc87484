//! Throwaway PostgreSQL clusters for catalog resources that name a database but no address, so
//! the quickstart's `demo-db` is a real database on a machine that has none of its own.
//!
//! Each cluster lives in `<data dir>/postgres/<resource>`, starts empty at every `serve` (a server
//! left running by a killed `serve` is stopped, and the old contents deleted), gets the catalog's database with a small `orders` table to
//! read, and is stopped when `serve` ends. The connector manages it through its superuser, and
//! it is reached in plaintext: it listens on loopback only.
//!
//! When we are root, PostgreSQL runs as the `postgres` user, which must pass through the data
//! directory and `<data dir>/postgres`: both are 0711 then ([`crate::data_dir`]).

use std::path::Path;

use airlock_core::catalog::{Catalog, PostgresTarget};
use airlock_postgres::cluster::{ClusterError, LocalCluster};
use airlock_postgres::reconciler::{Target, connection};
use airlock_postgres::roles::describe;
use postgres_protocol::escape::escape_identifier;

/// Rows to look at in a fresh demo database.
const SEED: &str = "
    CREATE TABLE orders (id int PRIMARY KEY, customer text NOT NULL, total numeric(10, 2) NOT NULL, status text NOT NULL);
    INSERT INTO orders VALUES
        (1, 'Ada', 120.00, 'shipped'), (2, 'Grace', 75.50, 'stuck'), (3, 'Linus', 18.25, 'stuck'),
        (4, 'Barbara', 240.00, 'paid'), (5, 'Edsger', 9.99, 'refunded');
";

/// The clusters started, and a connector target for each.
pub struct Throwaway {
    pub clusters: Vec<LocalCluster>,
    pub targets: Vec<Target>,
}

/// Starts a cluster for every `postgres` resource without an address. A resource whose cluster
/// cannot start is reported and left without one: requests for it still work, and no database
/// role is made for its grants.
pub async fn start(catalog: &Catalog, data_dir: &Path) -> Throwaway {
    let mut started = Throwaway { clusters: Vec::new(), targets: Vec::new() };
    let wanted: Vec<_> = catalog
        .resources()
        .filter_map(|resource| match &resource.postgres {
            Some(PostgresTarget { address: None, database, .. }) => Some((resource, database)),
            _ => None,
        })
        .collect();
    if wanted.is_empty() {
        return started;
    }
    let passes_through = crate::data_dir::postgres_passes_through(catalog);
    let clusters = match crate::data_dir::throwaway_dir(data_dir, passes_through) {
        Ok(clusters) => clusters,
        Err(error) => {
            eprintln!("warning: no throwaway PostgreSQL ({error}); grants on its resources get no database role");
            return started;
        }
    };
    for (resource, database) in wanted {
        let dir = clusters.join(resource.name.as_str());
        match start_one(&dir, database).await {
            Ok(cluster) => {
                println!(
                    "started a throwaway PostgreSQL for `{}` on {}:{} (database `{database}`, data in {}, discarded at exit)",
                    resource.name,
                    cluster.host(),
                    cluster.port(),
                    dir.display()
                );
                let login = connection(
                    cluster.host(),
                    cluster.port(),
                    database,
                    cluster.superuser(),
                    cluster.superuser_password(),
                );
                started.targets.push(Target::new(resource, login, None));
                started.clusters.push(cluster);
            }
            Err(error) => eprintln!(
                "warning: no throwaway PostgreSQL for `{}` ({error}); its grants get no database role",
                resource.name
            ),
        }
    }
    started
}

async fn start_one(dir: &Path, database: &str) -> Result<LocalCluster, ClusterError> {
    if dir.exists() {
        LocalCluster::stop_leftover(dir).await?;
        std::fs::remove_dir_all(dir)
            .map_err(|source| ClusterError::Io { what: format!("removing {}", dir.display()), source })?;
    }
    let cluster = LocalCluster::start(dir).await?;
    if database != "postgres" {
        let create = format!("CREATE DATABASE {}", escape_identifier(database));
        let created = cluster.connect("postgres").await?.batch_execute(&create).await;
        created.map_err(|e| ClusterError::Sql {
            what: format!("creating database `{database}`"),
            message: describe(&e),
        })?;
    }
    let seeded = cluster.connect(database).await?.batch_execute(SEED).await;
    seeded.map_err(|e| ClusterError::Sql { what: "adding the demo table".to_owned(), message: describe(&e) })?;
    Ok(cluster)
}

impl Throwaway {
    pub async fn stop(self) {
        for cluster in self.clusters {
            if let Err(error) = cluster.stop().await {
                eprintln!("warning: a throwaway PostgreSQL did not stop cleanly: {error}");
            }
        }
    }
}
