// Test double of android.content.res.AssetManager: open(path) reads <root>/<path>, as the merged assets of the
// base APK and its install-time asset-pack splits appear to an app.
package android.content.res;

import java.io.File;
import java.io.FileInputStream;
import java.io.IOException;
import java.io.InputStream;

public class AssetManager {
    private final File root;

    public AssetManager(File root) { this.root = root; }

    public InputStream open(String fileName) throws IOException {
        return new FileInputStream(new File(root, fileName));
    }
}
