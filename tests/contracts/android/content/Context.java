// Test double of android.content.Context: only what ModelAssets.kt calls, backed by plain folders.
package android.content;

import android.content.res.AssetManager;
import java.io.File;

public class Context {
    private final File externalFiles;
    private final AssetManager assets;

    public Context(File externalFiles, File assetsRoot) {
        this.externalFiles = externalFiles;
        this.assets = new AssetManager(assetsRoot);
    }

    public File getExternalFilesDir(String type) { return externalFiles; }

    public File getFilesDir() { return externalFiles; }

    public AssetManager getAssets() { return assets; }
}
