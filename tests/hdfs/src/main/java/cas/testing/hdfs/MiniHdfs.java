package cas.testing.hdfs;

import java.io.File;
import java.io.IOException;
import java.io.InputStream;
import java.net.InetSocketAddress;
import java.util.concurrent.atomic.AtomicBoolean;

import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.FileSystem;
import org.apache.hadoop.fs.Path;
import org.apache.hadoop.fs.permission.FsPermission;
import org.apache.hadoop.hdfs.HdfsConfiguration;
import org.apache.hadoop.hdfs.MiniDFSCluster;

/**
 * A one-datanode HDFS for tests, bound to 127.0.0.1 only.
 *
 * <p>Usage: {@code MiniHdfs BASE_DIR [HTTP_PORT [USER]]}. HTTP_PORT 0 picks a free port. When USER
 * is given, {@code /user/USER} is created and owned by USER, so a client speaking as USER (WebHDFS
 * {@code user.name}, simple auth) can write there while permissions stay enforced elsewhere.
 *
 * <p>Once WebHDFS answers, one line is printed to stdout:
 * {@code MINIHDFS READY http=127.0.0.1:PORT rpc=127.0.0.1:PORT superuser=NAME}. Nothing else is
 * written to stdout; Hadoop's own logging goes to stderr. The cluster stops and the process exits
 * when stdin reaches end of file (the parent went away or closed the pipe) or on SIGTERM/SIGINT.
 */
public final class MiniHdfs {
    private static final String LOOPBACK = "127.0.0.1";
    /** Entries the NameNode lists per request (dfs.ls.limit; Hadoop's default is 1000): small, so
     * a test paginates a listing with a few hundred files, not thousands. Reported on the ready line. */
    private static final int LIST_LIMIT = 50;

    private MiniHdfs() {
    }

    public static void main(String[] args) throws Exception {
        if (args.length < 1 || args.length > 3) {
            System.err.println("usage: MiniHdfs BASE_DIR [HTTP_PORT [USER]]");
            System.exit(2);
        }
        File baseDir = new File(args[0]).getAbsoluteFile();
        int httpPort = args.length > 1 ? Integer.parseInt(args[1]) : 0;
        String user = args.length > 2 ? args[2] : null;

        MiniDFSCluster cluster = new MiniDFSCluster.Builder(loopbackConfiguration(), baseDir)
                .numDataNodes(1)
                .nameNodePort(0)
                .nameNodeHttpPort(httpPort)
                // Keep our loopback datanode addresses instead of MiniDFSCluster's defaults.
                .checkDataNodeAddrConfig(true)
                .checkDataNodeHostConfig(true)
                .format(true)
                .build();
        AtomicBoolean stopped = new AtomicBoolean(false);
        Runnable stop = () -> {
            if (stopped.compareAndSet(false, true)) {
                cluster.shutdown(true);
            }
        };
        // SIGTERM and SIGINT run shutdown hooks; stdin EOF is handled below.
        Runtime.getRuntime().addShutdownHook(new Thread(stop, "minihdfs-stop"));

        cluster.waitActive();
        cluster.waitClusterUp();
        String superuser = System.getProperty("user.name");
        if (user != null && !user.isEmpty()) {
            FileSystem fs = cluster.getFileSystem();
            Path home = new Path("/user/" + user);
            fs.mkdirs(new Path("/user"), new FsPermission((short) 0755));
            fs.mkdirs(home, new FsPermission((short) 0755));
            fs.setOwner(home, user, "supergroup");
        }
        InetSocketAddress http = cluster.getNameNode().getHttpAddress();
        InetSocketAddress rpc = cluster.getNameNode().getNameNodeAddress();
        System.out.println("MINIHDFS READY http=" + LOOPBACK + ":" + http.getPort()
                + " rpc=" + LOOPBACK + ":" + rpc.getPort() + " superuser=" + superuser
                + " list_limit=" + LIST_LIMIT);
        System.out.flush();

        waitForEof(System.in);
        stop.run();
        System.exit(0);
    }

    /** Every listening and advertised address on loopback, permissions on, simple auth. */
    private static Configuration loopbackConfiguration() {
        Configuration conf = new HdfsConfiguration();
        conf.set("hadoop.security.authentication", "simple");
        conf.setBoolean("dfs.permissions.enabled", true);
        conf.setBoolean("dfs.webhdfs.enabled", true);
        conf.set("dfs.namenode.rpc-bind-host", LOOPBACK);
        conf.set("dfs.namenode.http-bind-host", LOOPBACK);
        conf.set("dfs.namenode.servicerpc-bind-host", LOOPBACK);
        conf.set("dfs.namenode.lifeline.rpc-bind-host", LOOPBACK);
        conf.set("dfs.namenode.https-bind-host", LOOPBACK);
        conf.set("dfs.namenode.https-address", LOOPBACK + ":0");
        conf.set("dfs.namenode.secondary.http-address", LOOPBACK + ":0");
        conf.set("dfs.namenode.secondary.https-address", LOOPBACK + ":0");
        conf.set("dfs.namenode.backup.address", LOOPBACK + ":0");
        conf.set("dfs.namenode.backup.http-address", LOOPBACK + ":0");
        conf.set("dfs.journalnode.rpc-address", LOOPBACK + ":0");
        conf.set("dfs.journalnode.http-address", LOOPBACK + ":0");
        // WebHDFS redirects OPEN/CREATE to the datanode under the name it registered with.
        conf.set("dfs.datanode.hostname", LOOPBACK);
        conf.set("dfs.datanode.address", LOOPBACK + ":0");
        conf.set("dfs.datanode.http.address", LOOPBACK + ":0");
        conf.set("dfs.datanode.https.address", LOOPBACK + ":0");
        conf.set("dfs.datanode.ipc.address", LOOPBACK + ":0");
        conf.setBoolean("dfs.datanode.use.datanode.hostname", false);
        conf.setBoolean("dfs.client.use.datanode.hostname", false);
        // One datanode: never wait for replicas that cannot exist, never try to replace it.
        conf.setInt("dfs.replication", 1);
        conf.setInt("dfs.namenode.replication.min", 1);
        conf.set("dfs.client.block.write.replace-datanode-on-failure.policy", "NEVER");
        conf.setBoolean("dfs.client.block.write.replace-datanode-on-failure.enable", false);
        conf.setInt("dfs.namenode.safemode.extension", 0);
        // Let close() finish once the last block is committed instead of polling (400 ms, then
        // doubling) until the datanode has reported it: one small file took ~160 ms otherwise.
        conf.setInt("dfs.namenode.file.close.num-committed-allowed", 1);
        conf.setInt("dfs.client.block.write.locateFollowingBlock.initial.delay.ms", 10);
        conf.setLong("dfs.blocksize", 4L * 1024 * 1024);
        conf.setInt("dfs.ls.limit", LIST_LIMIT);
        return conf;
    }

    private static void waitForEof(InputStream in) {
        byte[] buffer = new byte[256];
        try {
            while (in.read(buffer) >= 0) {
                // Input is ignored; only its end matters.
            }
        } catch (IOException e) {
            // A broken stdin means the parent is gone: stop as for end of file.
        }
    }
}
