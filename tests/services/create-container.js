// Creates a blob container on Azurite (OpenDAL has no container API): the tests' setup step.
// Usage: node create-container.js ENDPOINT ACCOUNT KEY CONTAINER
const { BlobServiceClient, StorageSharedKeyCredential } = require("@azure/storage-blob");

async function main() {
  const [endpoint, account, key, container] = process.argv.slice(2);
  if (!container) throw new Error("usage: create-container.js ENDPOINT ACCOUNT KEY CONTAINER");
  const service = new BlobServiceClient(endpoint, new StorageSharedKeyCredential(account, key));
  await service.getContainerClient(container).createIfNotExists();
}

main().catch((e) => {
  console.error(`create-container: ${e.message}`);
  process.exit(1);
});
