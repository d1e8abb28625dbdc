//! A client of a running simulator, for the `xenvault sim ...` subcommands and the tests
//! that drive it (`sim.*` methods): the product's XenAPI client, logged in as root. Any
//! certificate is trusted: the simulator's is self-signed and it is a test tool.

use xenvault_xapi::{Client, Error, ServerTrust, Value};

pub struct SimClient {
    client: Client,
}

impl SimClient {
    /// Logs in as root.
    pub async fn login(url: &str, password: &str) -> Result<Self, Error> {
        let client = Client::builder(url).tls(ServerTrust::Insecure).build()?;
        client.login_with_password("root", password).await?;
        Ok(SimClient { client })
    }

    /// Calls `method` with the session first, then `params`.
    pub async fn call(&self, method: &str, params: Vec<Value>) -> Result<Value, Error> {
        self.client.call(method, &params).await
    }

    pub async fn logout(self) -> Result<(), Error> {
        self.client.logout().await
    }
}
